import Etcd
import Logging
import ServiceLifecycle
import Synchronization

/// Whether etcd answers, checked every `interval` with a linearizable read (which needs a quorum).
/// `serve` reports itself degraded while etcd does not answer: it keeps routing with the maps it has
/// (the nodes' ownership fence keeps that safe) and metadata changes fail with a clear error.
public final class EtcdProbe: Service, Sendable {
    private let etcd: EtcdClient
    private let key: String
    private let interval: Duration
    private let staleAfter: Duration
    private let logger: Logger
    private let state = Mutex<(lastSuccess: ContinuousClock.Instant, lastError: String?)>((.now, nil))

    /// - Parameters:
    ///   - key: any key to read (its absence is an answer too).
    ///   - staleAfter: without an answer for this long, etcd counts as unreachable.
    public init(etcd: EtcdClient, key: String, interval: Duration = .seconds(1), staleAfter: Duration = .seconds(3), logger: Logger) {
        self.etcd = etcd
        self.key = key
        self.interval = interval
        self.staleAfter = staleAfter
        self.logger = logger
    }

    /// Nil while etcd answers; otherwise why it is considered unreachable.
    public var unreachable: String? {
        let (last, error) = state.withLock { $0 }
        let silence = ContinuousClock.now - last
        guard silence > staleAfter else { return nil }
        return "etcd has not answered for \(silence.components.seconds) s" + (error.map { " (last error: \($0))" } ?? "")
    }

    public func run() async throws {
        await cancelWhenGracefulShutdown {
            var wasDown = false
            while !Task.isCancelled {
                do {
                    _ = try await self.etcd.get(self.key)
                    self.state.withLock { $0 = (.now, nil) }
                    if wasDown { self.logger.notice("etcd answers again") }
                    wasDown = false
                } catch {
                    self.state.withLock { $0.lastError = "\(error)" }
                    if !wasDown, self.unreachable != nil {
                        self.logger.error("etcd unreachable: serving with the last known maps", metadata: ["error": "\(error)"])
                        wasDown = true
                    }
                }
                try? await Task.sleep(for: self.interval)
            }
        }
    }
}
