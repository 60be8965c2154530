import Logging
import ServiceLifecycle

/// Keeps an etcd lease alive as a `Service`, granting a new one when it is lost.
///
/// `onGranted` runs for every lease it obtains (put the leased keys there); `onLost` runs when a
/// lease is found gone (expired while etcd was unreachable, or revoked). On graceful shutdown the
/// current lease is revoked, so its keys vanish at once rather than after the TTL.
public struct LeaseKeepAlive: Service {
    public let client: EtcdClient
    public let ttl: Int64
    public let interval: Duration
    let logger: Logger
    let onGranted: @Sendable (EtcdLease) async throws -> Void
    let onLost: @Sendable (EtcdLease) async -> Void

    public init(client: EtcdClient, ttl: Int64, interval: Duration, logger: Logger,
                onGranted: @escaping @Sendable (EtcdLease) async throws -> Void,
                onLost: @escaping @Sendable (EtcdLease) async -> Void = { _ in }) {
        self.client = client
        self.ttl = ttl
        self.interval = interval
        self.logger = logger
        self.onGranted = onGranted
        self.onLost = onLost
    }

    public func run() async throws {
        var lease: EtcdLease?
        await withGracefulShutdownHandler {
            while !Task.isCancelled && !Task.isShuttingDownGracefully {
                do {
                    if let current = lease {
                        if try await client.keepAliveOnce(current.id) == nil {
                            logger.warning("etcd lease lost", metadata: ["lease": "\(current.id)"])
                            lease = nil
                            await onLost(current)
                            continue
                        }
                    } else {
                        let granted = try await client.grantLease(ttl: ttl)
                        try await onGranted(granted)
                        lease = granted
                        logger.info("etcd lease granted", metadata: ["lease": "\(granted.id)", "ttl": "\(granted.ttl)"])
                    }
                } catch {
                    logger.warning("etcd lease keep-alive failed; retrying", metadata: ["error": "\(error)"])
                }
                try? await Task.sleep(for: interval)
            }
        } onGracefulShutdown: {}
        if let lease {
            try? await client.revokeLease(lease.id)
        }
    }
}
