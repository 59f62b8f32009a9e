import NIOCore
import UnderstudyReplication

/// The top of the primary's pipeline, after the handshake, on the event loop: each answer of the
/// backup goes to what it answers — the seed, the pacing and refusals to the link, the
/// acknowledgements of the log, checkpoints and syncs to the mode's stream. An answer the mode
/// does not expect ends the connection.
final class AcknowledgementHandler: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = WireMessage
    private let link: BackupLink
    private let stream: any BackupStream

    init(link: BackupLink, stream: any BackupStream) {
        self.link = link
        self.stream = stream
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let channel = context.channel
        let message = unwrapInboundIn(data)
        do {
            switch message {
            case .logHeld(let position):
                try stream.logHeld(below: position, on: channel)
            case .checkpointApplied(let applied):
                // The seed's two (0 and 1) are not counted: only the mode's stream is paced.
                if applied >= 2 { link.checkpointApplied(on: channel) }
                try stream.checkpointApplied(applied, on: channel)
                if applied == 1 { link.seedApplied(on: channel) }
            case .syncMatched(let sync):
                try stream.syncMatched(sync, on: channel)
            case .syncDiffers(let sync, let blockSize, let stateDigest, let hashes):
                try stream.syncDiffers(sync, blockSize: blockSize, stateDigest: stateDigest, hashes: hashes, on: channel)
            case .refusal(let reason):
                link.backupRefused(channel, reason: reason)
            case .takingOver(let generation):
                link.takingOver?(generation)
            default:
                throw ProtocolViolation("unexpected \(message.kind) from the backup")
            }
        } catch {
            link.refuse(channel, because: "\(error)")
        }
    }
}
