import Foundation
import UnderstudyMachine

extension MachineState {
    /// The first way `self` (a replayed state) differs from `expected` (a recorded one), named
    /// so a person can look: memory size, a page and byte offset, a global, the descriptor
    /// table, or where the unwound stack lies. nil when they are identical.
    public func firstDifference(from expected: MachineState) -> String? {
        guard memory.count == expected.memory.count else {
            return "memory is \(memory.count) bytes, the recording has \(expected.memory.count)"
        }
        let differing = memory.withUnsafeBytes { mine in
            expected.memory.withUnsafeBytes { theirs -> Int? in
                if memcmp(mine.baseAddress!, theirs.baseAddress!, mine.count) == 0 { return nil }
                return (0..<mine.count).first { mine[$0] != theirs[$0] }
            }
        }
        if let offset = differing {
            return String(
                format: "memory page %d (byte 0x%x) differs: replayed 0x%02x, recorded 0x%02x", offset / Checkpoint.pageSize,
                offset, memory[offset], expected.memory[offset])
        }
        if globals != expected.globals {
            let recorded = Dictionary(expected.globals.map { ($0.name, $0) }, uniquingKeysWith: { a, _ in a })
            for global in globals where recorded[global.name] != global {
                let theirs = recorded[global.name].map { String($0.bits) } ?? "nothing"
                return "global \(global.name) differs: replayed \(global.bits), recorded \(theirs)"
            }
            return "the set of globals differs"
        }
        if descriptors != expected.descriptors {
            let count = max(descriptors.entries.count, expected.descriptors.entries.count)
            let fd = (0..<count).first { index in
                (index < descriptors.entries.count ? descriptors.entries[index] : nil)
                    != (index < expected.descriptors.entries.count ? expected.descriptors.entries[index] : nil)
            }
            return "descriptor table differs at fd \(fd.map(String.init) ?? "?")"
        }
        if unwindDataAddress != expected.unwindDataAddress {
            return "the unwound stack lies at \(unwindDataAddress), the recording has it at \(expected.unwindDataAddress)"
        }
        if unwoundStack != expected.unwoundStack {
            return "the unwound stack differs (\(unwoundStack.count) bytes, the recording's \(expected.unwoundStack.count))"
        }
        return nil
    }
}
