import NIOCore
import NIOPosix
import Synchronization

/// A TCP proxy in front of one mariadbd that loses a `COMMIT` on purpose, once, when armed: the
/// only way to stop a real server at exactly that statement. Everything else passes through.
final class FaultProxy: Sendable {
    enum Fault: Sendable {
        /// The COMMIT never reaches the server; both connections close (the server rolls back).
        case dropCommit
        /// The COMMIT reaches the server, which applies it; the client's connection closes before
        /// the answer can reach it.
        case dropCommitAnswer
        /// As ``dropCommitAnswer``, and from then on the proxy refuses every new connection (the
        /// node is unreachable) until ``FaultProxy/heal()``.
        case dropCommitAnswerThenRefuse
    }

    /// The loopback port to connect to instead of the server's.
    let port: Int
    private let listener: any Channel
    private let control: Control

    /// Which fault is armed and how many fired; shared by every relayed connection.
    final class Control: Sendable {
        private let state = Mutex<(armed: Fault?, fired: Int, refusing: Bool)>((nil, 0, false))

        /// The armed fault, disarmed, when `packet` is a client's `COM_QUERY "COMMIT"`.
        func take(ifCommit packet: ByteBuffer) -> Fault? {
            let start = packet.readerIndex
            guard packet.readableBytes >= 10, packet.getInteger(at: start + 4, as: UInt8.self) == 0x03,
                  packet.getString(at: start + 5, length: 6)?.uppercased() == "COMMIT" else { return nil }
            return state.withLock { s in
                guard let fault = s.armed else { return nil }
                s.armed = nil
                s.fired += 1
                if case .dropCommitAnswerThenRefuse = fault { s.refusing = true }
                return fault
            }
        }

        func arm(_ fault: Fault) { state.withLock { $0.armed = fault } }
        var fired: Int { state.withLock { $0.fired } }
        var refusing: Bool { state.withLock { $0.refusing } }
        func heal() { state.withLock { $0.refusing = false } }
    }

    private init(port: Int, listener: any Channel, control: Control) {
        self.port = port
        self.listener = listener
        self.control = control
    }

    static func start(upstreamHost: String, upstreamPort: Int) async throws -> FaultProxy {
        let control = Control()
        let listener = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .childChannelInitializer { client in
                if control.refusing { return client.close() }
                // Both ends live on the client's event loop, so the relays need no locks.
                return ClientBootstrap(group: client.eventLoop)
                    .channelInitializer { upstream in
                        upstream.eventLoop.makeCompletedFuture {
                            try upstream.pipeline.syncOperations.addHandler(Relay(peer: client, control: nil))
                        }
                    }
                    .connect(host: upstreamHost, port: upstreamPort)
                    .flatMapThrowing { upstream in
                        try client.pipeline.syncOperations.addHandler(Relay(peer: upstream, control: control))
                    }
            }
            .bind(host: "127.0.0.1", port: 0).get()
        guard let port = listener.localAddress?.port else { throw FaultProxyError() }
        return FaultProxy(port: port, listener: listener, control: control)
    }

    /// The next COMMIT through the proxy meets `fault`.
    func arm(_ fault: Fault) { control.arm(fault) }

    /// Accepts connections again after ``Fault/dropCommitAnswerThenRefuse``.
    func heal() { control.heal() }

    /// How many armed faults have fired.
    var fired: Int { control.fired }

    func shutdown() async throws { try await listener.close() }
}

struct FaultProxyError: Error {}

/// Copies what one side sends to the other. On the client's side (`control` set) it applies an
/// armed fault to a COMMIT.
private final class Relay: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer

    let peer: any Channel
    let control: FaultProxy.Control?
    /// Set when the peer must outlive this side for a while (the answer-lost fault).
    private var keepPeer = false

    init(peer: any Channel, control: FaultProxy.Control?) {
        self.peer = peer
        self.control = control
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let packet = unwrapInboundIn(data)
        switch control?.take(ifCommit: packet) {
        case nil:
            peer.writeAndFlush(packet, promise: nil)
        case .dropCommit?:
            context.close(promise: nil)
            peer.close(promise: nil)
        case .dropCommitAnswer?, .dropCommitAnswerThenRefuse?:
            // The server gets the COMMIT; the client hangs up at once and never sees the answer.
            keepPeer = true
            peer.writeAndFlush(packet, promise: nil)
            context.close(promise: nil)
            let upstream = peer
            upstream.eventLoop.scheduleTask(in: .milliseconds(500)) { upstream.close(promise: nil) }
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        if !keepPeer { peer.close(promise: nil) }
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }
}
