/// A binary heap of events by time, ties in the order they were pushed: runs are reproducible.
struct EventQueue {
    struct Event {
        let time: UInt64
        let order: UInt64
        let run: (inout RoleSimulation) throws(RoleSimulation.Violation) -> Void
    }

    private var heap: [Event] = []
    private var pushed: UInt64 = 0

    mutating func push(time: UInt64, _ run: @escaping (inout RoleSimulation) throws(RoleSimulation.Violation) -> Void) {
        heap.append(Event(time: time, order: pushed, run: run))
        pushed += 1
        var child = heap.count - 1
        while child > 0 {
            let parent = (child - 1) / 2
            guard Self.before(heap[child], heap[parent]) else { break }
            heap.swapAt(child, parent)
            child = parent
        }
    }

    mutating func pop() -> Event? {
        guard !heap.isEmpty else { return nil }
        heap.swapAt(0, heap.count - 1)
        let top = heap.removeLast()
        var parent = 0
        while true {
            let (left, right) = (2 * parent + 1, 2 * parent + 2)
            var first = parent
            if left < heap.count && Self.before(heap[left], heap[first]) { first = left }
            if right < heap.count && Self.before(heap[right], heap[first]) { first = right }
            guard first != parent else { return top }
            heap.swapAt(first, parent)
            parent = first
        }
    }

    private static func before(_ a: Event, _ b: Event) -> Bool { a.time < b.time || (a.time == b.time && a.order < b.order) }
}
