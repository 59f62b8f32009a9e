import UnderstudyCore
import UnderstudyReplication

/// A deterministic simulation of the role protocol (DESIGN.md, "One primary"; TigerBeetle's VOPR
/// in miniature): the real `PrimaryRole` and `BackupRole`, a simulated network between them
/// (TCP-like: ordered, delayed by partitions, ended by FIN or by heartbeat silence), a simulated
/// clock, a simulated etcd (one conditional write at a time, unreachable at times, sometimes
/// applying a write whose answer is lost), clients writing through whoever serves, and seeded
/// faults: crashes, host deaths, pauses, partitions, etcd outages, planned handovers. A backup that
/// took over becomes the primary (`PrimaryRole.promoted`) once the old primary is gone, and a new
/// standby is started wherever the backup's side is empty, as an operator (or `primary
/// --replication`) does: so a run can be a chain of primaries. It checks, at every step:
/// - one releaser per generation, and every output released without the backup's acknowledgement
///   released by the store's current holder;
/// - no acknowledged write is missing from whoever takes over;
/// and at the end, that the service makes progress once the faults stop (unless no process is
/// left that may serve).
struct RoleSimulation {
    struct Violation: Error, CustomStringConvertible {
        let seed: UInt64
        let time: UInt64
        let what: String
        let trace: [String]
        var description: String { "seed \(seed) at \(time / 1000) ms: \(what)\n  " + trace.suffix(40).joined(separator: "\n  ") }
    }

    // Times in microseconds.
    static let heartbeatInterval: UInt64 = 10_000
    static let heartbeatTimeout: UInt64 = 100_000
    static let fenceTimeout: UInt64 = 1_000_000
    static let storeTimeout: UInt64 = 300_000
    static let faultsEnd: UInt64 = 1_500_000
    static let end: UInt64 = 3_500_000

    enum Side: Int { case primary, backup }

    enum Message {
        case hello(session: Int, generation: UInt64)
        case welcome(session: Int)
        case refused(session: Int)
        case seed(session: Int, writes: [Int], generation: UInt64)
        case entry(session: Int, write: Int, position: Int, generation: UInt64)
        case marker(session: Int, generation: UInt64, position: Int)
        case ack(session: Int, position: Int)
        case heartbeat(session: Int)
        /// Said before a close that is not a death (given up for silence, a refusal).
        case givenUp(session: Int)
        /// The kernel's FIN.
        case fin(session: Int)
        /// A planned handover: the primary's guest is stopped at `position`.
        case handover(session: Int, position: Int)
        /// The backup won the generation the handover asked it to claim.
        case takingOver(session: Int)

        var session: Int {
            switch self {
            case .hello(let s, _), .welcome(let s), .refused(let s), .seed(let s, _, _), .entry(let s, _, _, _), .marker(let s, _, _),
                .ack(let s, _), .heartbeat(let s), .givenUp(let s), .fin(let s), .handover(let s, _), .takingOver(let s):
                return s
            }
        }
    }

    struct Process {
        /// The identity it holds a role as: the store's holder names it.
        var name: String
        /// Which process occupies its side: events for an earlier one (a message in flight to a
        /// process since replaced, a store answer it waited for) are dropped.
        var incarnation: Int
        var alive = true
        var pausedUntil: UInt64 = 0
        var hostDead = false
        var cutFromStore: (UInt64, UInt64) = (0, 0)
        var session: Int?
        var lastHeard: UInt64 = 0
        var lastCheck: UInt64 = 0
    }

    let seed: UInt64
    var random: SeededGenerator
    var incarnations = 1
    var now: UInt64 = 0
    private var queue = EventQueue()
    private var trace: [String] = []

    // The store.
    var store: GenerationRecord?
    var storeDown: (UInt64, UInt64) = (0, 0)
    var answerLostChance = 0.0
    /// Generation → who released output in it.
    var releasers: [UInt64: String] = [:]

    // The link primary ↔ backup: partitioned during this window; FIFO per direction.
    var partition: (UInt64, UInt64) = (0, 0)
    var lastDelivery: [UInt64] = [0, 0]

    // The primary.
    var p = Process(name: "P", incarnation: 0)
    var primaryRole = PrimaryRole(holder: "P", fenceTimeoutNanos: RoleSimulation.fenceTimeout * 1000)
    var primaryState: [Int] = []
    var held: [(write: Int, position: Int)] = []
    var holding = true  // until the first claim is won nothing leaves
    var primaryGeneration: UInt64 = 0
    var seededSession: Int?
    /// The session output waits for: only its acknowledgements release it.
    var protectingSession: Int?
    /// The protecting backup's acknowledgements have passed the marker: a handover may be asked.
    var markerPassed = false
    var markerPosition = 0
    var nextSession = 1
    /// A planned handover under way: the guest is stopped; the backup must take over by `deadline`.
    var handingOver: (session: Int, position: Int, deadline: UInt64)?

    // The backup.
    var b = Process(name: "B", incarnation: 1)
    var backupRole = BackupRole(identity: "B")
    var copy: [Int] = []
    var copySession: Int?
    var marker: (generation: UInt64, position: Int)?
    var backupServes = false
    var backupState: [Int] = []
    /// The handover asked on this session, and whether its claim has begun.
    var handoverAsked: (session: Int, position: Int)?
    var claimingHandover = false
    /// When a standby is started on the empty backup side.
    var standbyDue: UInt64?

    // Clients.
    var acknowledged: Set<Int> = []
    var nextWrite = 1
    var lastAcknowledgedAt: UInt64 = 0

    /// What happened in a run, counted over many so a test can see that the faults bit.
    var fencedAndWonAlone = false
    var discardedCopy = false
    var takeovers = 0
    var stoodDown = 0
    var promotedPrimaries = 0
    /// A promoted backup, serving as the primary, recorded a standby of its own as protecting it.
    var promotedAndProtected = false
    var handovers = 0

    struct Outcomes: CustomStringConvertible {
        var runs = 0, takeovers = 0, primariesStoodDown = 0, primariesWonAlone = 0, backupsDiscarded = 0
        var promotedPrimaries = 0, promotedAndProtected = 0, chains = 0, handovers = 0

        mutating func count(_ run: RoleSimulation) {
            runs += 1
            takeovers += run.takeovers
            primariesStoodDown += run.stoodDown
            if run.fencedAndWonAlone { primariesWonAlone += 1 }
            if run.discardedCopy { backupsDiscarded += 1 }
            promotedPrimaries += run.promotedPrimaries
            if run.promotedAndProtected { promotedAndProtected += 1 }
            if run.takeovers >= 2 { chains += 1 }
            handovers += run.handovers
        }

        var description: String {
            "\(runs) runs: \(takeovers) takeovers, \(primariesStoodDown) primaries stood down, \(primariesWonAlone) fenced primaries won alone, "
                + "\(backupsDiscarded) backups discarded their copy, \(promotedPrimaries) promoted backups served as primaries, "
                + "\(promotedAndProtected) runs where one was protected again, \(chains) runs of two takeovers or more, "
                + "\(handovers) planned handovers"
        }
    }

    init(seed: UInt64) {
        self.seed = seed
        random = SeededGenerator(seed: seed)
    }

    // MARK: Running

    mutating func run() throws(Violation) {
        scheduleFaults()
        at(0) { sim throws(Violation) in try sim.startPrimary() }
        scheduleHandovers()
        at(1_000) { sim throws(Violation) in try sim.tick() }
        at(2_000) { sim throws(Violation) in try sim.clientWrites() }
        while let event = queue.pop() {
            guard event.time <= Self.end else { break }
            now = event.time
            try event.run(&self)
        }
        try checkProgress()
    }

    mutating func at(_ time: UInt64, _ run: @escaping (inout RoleSimulation) throws(Violation) -> Void) {
        queue.push(time: max(time, now), run)
    }

    mutating func note(_ line: String) { trace.append("\(now / 1000).\(now % 1000 / 100) \(line)") }

    func violation(_ what: String) -> Violation { Violation(seed: seed, time: now, what: what, trace: trace) }

    /// Runs `body` at `time` on the process that occupies `side` now, when it is alive and not
    /// paused (a paused process runs it later; one replaced meanwhile, never).
    mutating func later(_ side: Side, at time: UInt64, _ body: @escaping (inout RoleSimulation) throws(Violation) -> Void) {
        let incarnation = (side == .primary ? p : b).incarnation
        at(time) { sim throws(Violation) in try sim.on(side, incarnation, body) }
    }

    private mutating func on(_ side: Side, _ incarnation: Int, _ body: @escaping (inout RoleSimulation) throws(Violation) -> Void) throws(Violation) {
        let process = side == .primary ? p : b
        guard process.alive, process.incarnation == incarnation else { return }
        if process.pausedUntil > now {
            at(process.pausedUntil) { sim throws(Violation) in try sim.on(side, incarnation, body) }
            return
        }
        try body(&self)
    }

    // MARK: Faults

    private mutating func scheduleFaults() {
        var crashes = 0
        for _ in 0..<Int.random(in: 0...3, using: &random) {
            let start = UInt64.random(in: 100_000...1_200_000, using: &random)
            let length = [50_000, 250_000, 1_000_000, 5_000_000, UInt64.random(in: 1_000...400_000, using: &random)].randomElement(using: &random)!
            let stop = min(start + length, Self.faultsEnd)
            switch Int.random(in: 0..<8, using: &random) {
            case 0: at(start) { sim throws(Violation) in sim.pause(.primary, until: stop) }
            case 1: at(start) { sim throws(Violation) in sim.pause(.backup, until: stop) }
            case 2 where crashes < 2:
                crashes += 1
                let hostDies = random.chance(0.5)
                at(start) { sim throws(Violation) in sim.crash(.primary, hostDies: hostDies) }
            case 3 where crashes < 2:
                crashes += 1
                let hostDies = random.chance(0.5)
                at(start) { sim throws(Violation) in sim.crash(.backup, hostDies: hostDies) }
            case 4: partition = (start, stop)
            case 5: storeDown = (start, stop)
            case 6: p.cutFromStore = (start, stop)
            default: b.cutFromStore = (start, stop)
            }
        }
        if random.chance(0.3) { answerLostChance = 0.3 }
    }

    private mutating func pause(_ side: Side, until: UInt64) {
        note("pause \(side) until \(until / 1000) ms")
        if side == .primary { p.pausedUntil = max(p.pausedUntil, until) } else { b.pausedUntil = max(b.pausedUntil, until) }
    }

    private mutating func crash(_ side: Side, hostDies: Bool) {
        note("crash \(side)\(hostDies ? " (host dies: no FIN)" : "")")
        let session = side == .primary ? p.session : b.session
        if side == .primary { p.alive = false } else { b.alive = false }
        if !hostDies, let session { send(from: side, .fin(session: session), kernel: true) }
    }

    // MARK: The network

    mutating func send(from side: Side, _ message: Message, kernel: Bool = false) {
        let sender = side == .primary ? p : b
        guard kernel || (sender.alive && !sender.hostDead) else { return }
        var time = now + UInt64.random(in: 50...1_500, using: &random)
        if partition.0 <= time && time < partition.1 { time = partition.1 + UInt64.random(in: 0...5_000, using: &random) }
        time = max(time, lastDelivery[side.rawValue])
        lastDelivery[side.rawValue] = time
        let to: Side = side == .primary ? .backup : .primary
        later(to, at: time) { sim throws(Violation) in try sim.deliver(message, to: to) }
    }

    private mutating func deliver(_ message: Message, to side: Side) throws(Violation) {
        if side == .primary { try primaryReceives(message) } else { try backupReceives(message) }
    }

    /// Heartbeats, liveness and reconnection, every interval, on each running side.
    private mutating func tick() throws(Violation) {
        at(now + Self.heartbeatInterval) { sim throws(Violation) in try sim.tick() }
        try succeed()
        for side in [Side.primary, .backup] {
            var process = side == .primary ? p : b
            guard process.alive, process.pausedUntil <= now, let session = process.session else { continue }
            // PeerLiveness: a check that comes a whole timeout late was this side's own pause.
            if now - process.lastCheck >= Self.heartbeatTimeout { process.lastHeard = now }
            process.lastCheck = now
            if side == .primary { p = process } else { b = process }
            if now - process.lastHeard > Self.heartbeatTimeout {
                note("\(side) gives up session \(session) for silence")
                send(from: side, .givenUp(session: session))
                send(from: side, .fin(session: session))
                // Silence is the primary's death to the backup; to the primary, a lost backup.
                try closed(side, session: session, death: side == .backup)
            } else {
                send(from: side, .heartbeat(session: session))
            }
        }
        if p.alive, p.pausedUntil <= now, p.session == nil, primaryGeneration > 0, !primaryRole.hasStoodDown, now % 50_000 < Self.heartbeatInterval {
            let session = nextSession
            nextSession += 1
            p.session = session
            p.lastHeard = now
            p.lastCheck = now
            send(from: .primary, .hello(session: session, generation: primaryGeneration))
        }
    }

    /// `side`'s end of `session` is gone; `death` when the peer did not say why.
    mutating func closed(_ side: Side, session: Int, death: Bool) throws(Violation) {
        if side == .primary {
            guard p.session == session else { return }
            p.session = nil
            let wasSeeded = seededSession == session
            seededSession = nil
            if wasSeeded { try primaryActs(primaryRole.backupLost(now: now * 1000)) }
        } else {
            guard b.session == session else { return }
            b.session = nil
            copySession = nil
            if death { try backupActs(backupRole.primaryGone()) } else { backupRole.sessionEnded() }
        }
    }

    // MARK: The store

    private mutating func storeWrite(from side: Side, _ record: GenerationRecord, ifGeneration expected: UInt64) {
        let process = side == .primary ? p : b
        let reachable =
            !(storeDown.0 <= now && now < storeDown.1) && !(process.cutFromStore.0 <= now && now < process.cutFromStore.1)
        let latency = UInt64.random(in: 200...3_000, using: &random)
        guard reachable else {
            later(side, at: now + Self.storeTimeout) { sim throws(Violation) in try sim.answered(side, nil, unreachable: true) }
            return
        }
        let won = (store?.generation ?? 0) == expected
        if won { store = record }
        note("store: \(side) writes \(record) if \(expected): \(won ? "won" : "lost to \(store.map { "\($0)" } ?? "none")")")
        let current = store
        if random.chance(answerLostChance) {
            later(side, at: now + Self.storeTimeout) { sim throws(Violation) in try sim.answered(side, nil, unreachable: true) }
        } else {
            later(side, at: now + latency) { sim throws(Violation) in try sim.answered(side, won ? nil : .some(current), unreachable: false) }
        }
    }

    /// `lost` is nil for a win, else the record that won.
    private mutating func answered(_ side: Side, _ lost: GenerationRecord??, unreachable: Bool) throws(Violation) {
        if side == .primary {
            guard primaryRole.inFlight != nil else { return }
            if unreachable { return try primaryActs(primaryRole.unreachable("timed out", now: now * 1000)) }
            if let lost { try primaryActs(primaryRole.lost(current: lost, now: now * 1000)) } else { try primaryActs(primaryRole.written(now: now * 1000)) }
        } else {
            guard backupRole.inFlight != nil else { return }
            if unreachable { return try backupActs(backupRole.unreachable()) }
            if let lost { try backupActs(backupRole.lost(current: lost)) } else { try backupActs(backupRole.written()) }
        }
    }

    // MARK: The primary

    private mutating func startPrimary() throws(Violation) {
        try primaryActs(primaryRole.start(after: 0, now: 0))
    }

    mutating func primaryActs(_ actions: [PrimaryRole.Action]) throws(Violation) {
        for action in actions {
            switch action {
            case .write(let record, let expected): storeWrite(from: .primary, record, ifGeneration: expected)
            case .retryLater:
                later(.primary, at: now + 50_000) { sim throws(Violation) in try sim.primaryActs(sim.primaryRole.retry()) }
            case .startHolding(let generation, let backup):
                // Applied by the machine's thread at its next suspension, a moment later.
                later(.primary, at: now + UInt64.random(in: 0...2_000, using: &random)) { sim throws(Violation) in
                    sim.startHolding(generation, for: backup)
                }
            case .releaseEverything(let generation):
                if generation > 1 && primaryGeneration > 0 { fencedAndWonAlone = true }
                primaryGeneration = generation
                holding = false
                protectingSession = nil
                note("primary releases everything in generation \(generation)")
                for (write, _) in held { try release(write, by: p.name, generation: generation, acknowledgedByBackup: false) }
                held = []
            case .standDown(let reason):
                note("primary stands down: \(reason)")
                stoodDown += 1
                held = []
                // No goodbye: the exit is a death to the backup, whose claim then decides (it
                // wins once the store answers, if this primary lost by its timeout).
                if let session = p.session { send(from: .primary, .fin(session: session)) }
                p.alive = false
            }
        }
    }

    private mutating func startHolding(_ generation: UInt64, for backup: String?) {
        guard !primaryRole.hasStoodDown else { return }
        holding = true
        primaryGeneration = generation
        note("primary holds from position \(primaryState.count) in generation \(generation)")
        protectingSession = nil
        markerPassed = false
        if let session = seededSession, backup == "\(b.name)#\(session)" {
            protectingSession = session
            markerPosition = primaryState.count
            if promotedPrimaries > 0 { promotedAndProtected = true }
            send(from: .primary, .marker(session: session, generation: generation, position: primaryState.count))
        }
    }

    private mutating func primaryTakes(_ write: Int) throws(Violation) {
        // A guest stopped for a handover takes nothing; its client waits, unanswered.
        guard !primaryRole.hasStoodDown, handingOver == nil else { return }
        primaryState.append(write)
        let position = primaryState.count
        if let session = p.session, copySessionSeededByPrimary.contains(session) {
            send(from: .primary, .entry(session: session, write: write, position: position, generation: primaryGeneration))
        }
        if holding {
            held.append((write, position))
        } else {
            try release(write, by: p.name, generation: primaryGeneration, acknowledgedByBackup: false)
        }
    }

    /// Sessions the primary has sent a seed on (they stream entries from then on).
    var copySessionSeededByPrimary: Set<Int> = []

    private mutating func primaryReceives(_ message: Message) throws(Violation) {
        guard !primaryRole.hasStoodDown, let session = p.session, message.session == session else { return }
        p.lastHeard = now
        switch message {
        case .welcome:
            copySessionSeededByPrimary.insert(session)
            send(from: .primary, .seed(session: session, writes: primaryState, generation: primaryGeneration))
        case .refused, .givenUp:
            p.session = nil
            let wasSeeded = seededSession == session
            seededSession = nil
            if wasSeeded { try primaryActs(primaryRole.backupLost(now: now * 1000)) }
        case .fin: try closed(.primary, session: session, death: true)
        case .ack(_, let position):
            if seededSession != session && copySessionSeededByPrimary.contains(session) {
                seededSession = session
                try primaryActs(primaryRole.backupSeeded("\(b.name)#\(session)"))
            }
            // Held output the backup holds may leave, whatever the standing (it can reproduce it).
            guard protectingSession == session else { return }
            if position >= markerPosition { markerPassed = true }
            while holding, let first = held.first, first.position <= position {
                held.removeFirst()
                try release(first.write, by: p.name, generation: primaryGeneration, acknowledgedByBackup: true)
            }
        case .takingOver: try handedOver(session)
        default: break
        }
    }

    // MARK: The backup

    mutating func backupActs(_ actions: [BackupRole.Action]) throws(Violation) {
        for action in actions {
            switch action {
            case .write(let record, let expected): storeWrite(from: .backup, record, ifGeneration: expected)
            case .retryLater:
                later(.backup, at: now + 50_000) { sim throws(Violation) in try sim.backupActs(sim.backupRole.retry()) }
            case .takeOver(let generation):
                note("backup \(b.name) takes over in generation \(generation) with \(copy.count) writes")
                takeovers += 1
                backupServes = true
                if claimingHandover, let asked = handoverAsked { send(from: .backup, .takingOver(session: asked.session)) }
                backupState = copy
                let missing = acknowledged.subtracting(backupState)
                if !missing.isEmpty { throw violation("acknowledged writes \(missing.sorted().prefix(5)) are not in the promoted backup") }
            case .discardCopy(let reason):
                note("backup discards its copy: \(reason)")
                copy = []
                marker = nil
                handoverAsked = nil
                claimingHandover = false
                discardedCopy = true
            }
        }
    }

    private mutating func backupReceives(_ message: Message) throws(Violation) {
        guard !backupServes else { return }
        if case .hello(let session, let generation) = message {
            if let reason = backupRole.admit(generation: generation) {
                note("backup refuses session \(session): \(reason)")
                return send(from: .backup, .refused(session: session))
            }
            b.session = session
            b.lastHeard = now
            b.lastCheck = now
            copy = []
            copySession = nil
            marker = nil
            handoverAsked = nil
            return send(from: .backup, .welcome(session: session))
        }
        guard let session = b.session, message.session == session else { return }
        b.lastHeard = now
        var generation: UInt64?
        if case .seed(_, _, let g) = message { generation = g }
        if case .entry(_, _, _, let g) = message { generation = g }
        if let generation, generation < backupRole.knownGeneration {
            note("backup refuses a frame of generation \(generation)")
            send(from: .backup, .givenUp(session: session))
            send(from: .backup, .fin(session: session))
            return try closed(.backup, session: session, death: false)
        }
        switch message {
        case .seed(_, let writes, _):
            copy = writes
            copySession = session
            send(from: .backup, .ack(session: session, position: copy.count))
            try checkMarker()
        case .entry(_, let write, let position, _):
            guard copySession == session, position == copy.count + 1 else { return }
            copy.append(write)
            send(from: .backup, .ack(session: session, position: copy.count))
            try checkMarker()
            try claimHandoverIfReached()
        case .marker(_, let generation, let position):
            marker = (generation, position)
            try checkMarker()
        case .handover(_, let position):
            note("backup is asked to take the machine over at position \(position)")
            handoverAsked = (session, position)
            try claimHandoverIfReached()
        case .givenUp: try closed(.backup, session: session, death: false)
        case .fin: try closed(.backup, session: session, death: true)
        default: break
        }
    }

    mutating func checkMarker() throws(Violation) {
        guard let marker, copy.count >= marker.position, backupRole.standing == .waiting else { return }
        if let reason = backupRole.protecting(generation: marker.generation) { note("backup ignores a marker: \(reason)") }
        self.marker = nil
    }

    // MARK: Clients

    private mutating func clientWrites() throws(Violation) {
        at(now + 2_000) { sim throws(Violation) in try sim.clientWrites() }
        let write = nextWrite
        nextWrite += 1
        // Whoever serves takes it (on two hosts a client may reach either side of a partition).
        var servers: [Side] = []
        if p.alive && !primaryRole.hasStoodDown && primaryGeneration > 0 { servers.append(.primary) }
        if b.alive && backupServes { servers.append(.backup) }
        guard let server = servers.randomElement(using: &random) else { return }
        try on(server, (server == .primary ? p : b).incarnation) { sim throws(Violation) in
            if server == .primary {
                try sim.primaryTakes(write)
            } else {
                sim.backupState.append(write)
                try sim.release(write, by: sim.b.name, generation: sim.backupRole.knownGeneration, acknowledgedByBackup: false)
            }
        }
    }

    private mutating func release(_ write: Int, by process: String, generation: UInt64, acknowledgedByBackup: Bool) throws(Violation) {
        if let other = releasers[generation], other != process {
            throw violation("\(process) and \(other) both release output in generation \(generation)")
        }
        releasers[generation] = process
        if !acknowledgedByBackup && store?.holder != process {
            throw violation("\(process) releases write \(write) alone while the store says \(store.map { "\($0)" } ?? "nothing")")
        }
        acknowledged.insert(write)
        lastAcknowledgedAt = now
    }

    // MARK: Progress

    private func checkProgress() throws(Violation) {
        guard lastAcknowledgedAt <= Self.faultsEnd + 1_000_000 else { return }
        // No process may serve: both gone, or the primary gone before the backup protected it.
        let primaryServes = p.alive && !primaryRole.hasStoodDown
        let backupMay = b.alive && (backupServes || backupRole.standing != .waiting)
        if !primaryServes && !backupMay { return }
        throw violation(
            "no write acknowledged since \(lastAcknowledgedAt / 1000) ms though the faults ended at \(Self.faultsEnd / 1000) ms (primary \(primaryRole.standing), backup \(backupRole.standing))"
        )
    }
}
