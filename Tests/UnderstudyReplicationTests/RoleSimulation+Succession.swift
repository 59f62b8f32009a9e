import UnderstudyReplication

/// How one primary follows another in the simulation, as in the processes: a backup that took
/// over becomes the machine's primary (`PrimaryRole.promoted`, holding the generation it won) and
/// seeds a standby of its own; a planned handover (`understudy migrate`) stops the primary's
/// guest, and the backup, once it holds everything, claims the next generation and says
/// `takingOver`, or the primary gives it up after a timeout and the generation decides.
extension RoleSimulation {
    /// How long a primary waits for its backup to take a handover (10 s in the process; the
    /// simulation's runs are shorter).
    static let handoverTimeout: UInt64 = 500_000

    mutating func scheduleHandovers() {
        guard random.chance(0.4) else { return }
        for _ in 0..<Int.random(in: 1...2, using: &random) {
            let time = UInt64.random(in: 200_000...1_300_000, using: &random)
            at(time) { sim throws(Violation) in
                sim.later(.primary, at: sim.now) { sim throws(Violation) in try sim.askHandover() }
            }
        }
    }

    /// The primary, asked to hand over: only a protected one whose backup has passed the marker
    /// may (`PlannedHandover` refuses otherwise), and it stops its guest where it stands.
    private mutating func askHandover() throws(Violation) {
        guard primaryRole.standing == .protected, markerPassed, handingOver == nil, let session = protectingSession, p.session == session
        else { return note("a handover is asked of a primary that cannot give one") }
        let position = primaryState.count
        note("primary \(p.name) hands over at position \(position)")
        handingOver = (session, position, now + Self.handoverTimeout)
        send(from: .primary, .handover(session: session, position: position))
        later(.primary, at: now + Self.handoverTimeout) { sim throws(Violation) in try sim.handoverTimedOut(session) }
    }

    /// No `takingOver` in time: the backup is given up like a lost one, and the guest resumes
    /// only once this primary has won the next generation alone (or it stands down).
    private mutating func handoverTimedOut(_ session: Int) throws(Violation) {
        guard let handingOver, handingOver.session == session else { return }
        note("primary gives up the handover on session \(session)")
        self.handingOver = nil
        send(from: .primary, .givenUp(session: session))
        send(from: .primary, .fin(session: session))
        try closed(.primary, session: session, death: false)
    }

    /// The backup: once its copy holds the handover's position, it claims the next generation as
    /// a takeover (the same claim as after a death).
    mutating func claimHandoverIfReached() throws(Violation) {
        guard let asked = handoverAsked, asked.session == b.session, copySession == asked.session, copy.count >= asked.position,
            !claimingHandover, backupRole.standing == .protecting
        else { return }
        claimingHandover = true
        note("backup claims the handed-over machine")
        try backupActs(backupRole.primaryGone())
    }

    /// The primary hears the backup won: everything the backup acknowledged has been released
    /// already (it holds the whole log), so the old primary leaves, and its side is empty until
    /// a standby is started there.
    mutating func handedOver(_ session: Int) throws(Violation) {
        guard let handingOver, handingOver.session == session else { return }
        guard held.isEmpty else { throw violation("primary leaves a handover with \(held.count) writes held") }
        note("primary \(p.name) has handed the machine over; it leaves")
        handovers += 1
        self.handingOver = nil
        p.session = nil
        p.alive = false
    }

    /// Every tick: a backup serving with no primary left becomes the primary; an empty backup
    /// side gets a new standby a little later.
    mutating func succeed() throws(Violation) {
        if backupServes, !p.alive || primaryRole.hasStoodDown, b.alive, b.pausedUntil <= now { try promoteBackup() }
        guard !b.alive else { return standbyDue = nil }
        guard let due = standbyDue else {
            standbyDue = now + UInt64.random(in: 100_000...400_000, using: &random)
            return
        }
        if now >= due { startStandby() }
    }

    /// The backup that took over is the machine's primary from here on, in the generation it won.
    private mutating func promoteBackup() throws(Violation) {
        let generation = backupRole.knownGeneration
        note("backup \(b.name) serves as the primary in generation \(generation)")
        promotedPrimaries += 1
        incarnations += 1
        p = b
        p.incarnation = incarnations
        p.session = nil
        primaryRole = PrimaryRole(holder: b.name, fenceTimeoutNanos: Self.fenceTimeout * 1000)
        primaryState = backupState
        held = []
        holding = true
        primaryGeneration = 0
        seededSession = nil
        protectingSession = nil
        markerPassed = false
        handingOver = nil
        copySessionSeededByPrimary = []
        try primaryActs(primaryRole.promoted(holding: generation))
        guard primaryGeneration == generation, !holding else { throw violation("a promoted backup does not serve its generation alone") }
        b.alive = false
        b.session = nil
        backupServes = false
    }

    private mutating func startStandby() {
        incarnations += 1
        let name = "S\(incarnations)"
        note("standby \(name) starts")
        b = Process(name: name, incarnation: incarnations)
        backupRole = BackupRole(identity: name)
        copy = []
        copySession = nil
        marker = nil
        handoverAsked = nil
        claimingHandover = false
        backupServes = false
        backupState = []
        standbyDue = nil
    }
}
