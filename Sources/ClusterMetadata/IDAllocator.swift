import Etcd

/// Hands out account ids from blocks reserved in etcd (`ids/account` holds the next free id).
///
/// Each block is reserved with a compare-and-swap on the key's mod revision, so concurrent
/// allocators in any number of processes never get the same id. Ids left in a block when its
/// allocator stops are never used: the only gaps are unused parts of blocks.
public actor IDAllocator {
    public let store: MetadataStore
    public let blockSize: Int64
    private var next: Int64 = 0
    private var end: Int64 = 0

    public init(store: MetadataStore, blockSize: Int64 = 100) {
        precondition(blockSize > 0)
        self.store = store
        self.blockSize = blockSize
    }

    /// The next id.
    public func nextID() async throws(MetadataError) -> Int64 {
        if next >= end {
            let block = try await reserveBlock()
            next = block.lowerBound
            end = block.upperBound
        }
        defer { next += 1 }
        return next
    }

    /// Reserves `[first, first + blockSize)` and advances the stored counter past it.
    public func reserveBlock() async throws(MetadataError) -> Range<Int64> {
        let key = store.keys.accountIDs
        for _ in 0..<1000 {
            do {
                let current = try await store.etcd.get(key)
                let first: Int64
                if let current {
                    guard let parsed = Int64(current.stringValue), parsed > 0 else {
                        throw MetadataError(.corrupt, "\(key) holds \"\(current.stringValue.prefix(20))\", not a positive id")
                    }
                    first = parsed
                } else {
                    first = 1
                }
                let result = try await store.etcd.transaction(
                    compare: [.modRevision(key, is: current?.modRevision ?? 0)],
                    success: [.put(key, String(first + blockSize))])
                if result.succeeded { return first..<(first + blockSize) }
            } catch let error as EtcdError where error.code == .outcomeUnknown {
                // The block may or may not be ours; never use it. Reading again skips it if it landed.
                continue
            } catch let error as EtcdError {
                throw MetadataError(error, while: "reserving an id block")
            } catch let error as MetadataError {
                throw error
            } catch {
                throw MetadataError(.etcd, "reserving an id block: \(error)", underlying: error)
            }
        }
        throw MetadataError(.conflict, "could not reserve an id block after 1000 contended attempts")
    }
}

extension MetadataStore {
    /// A new range id: `letter` and the number `ids/range` holds, which is advanced by a
    /// compare-and-swap, so no two callers (and no two maps) ever get the same number and an id is
    /// never reused, even after its range is gone. The first call starts above every number the
    /// maps' ids use (`existing`). A number whose answer was lost is skipped, never handed out twice.
    public func allocateRangeID(letter: String, existing: [String]) async throws(MetadataError) -> String {
        let key = keys.rangeIDs
        let highest = existing.compactMap { Int64($0.drop { !$0.isNumber }) }.max() ?? 0
        for _ in 0..<100 {
            do {
                let current = try await etcd.get(key)
                var next = highest + 1
                if let current {
                    guard let stored = Int64(current.stringValue), stored > 0 else {
                        throw MetadataError(.corrupt, "\(key) holds \"\(current.stringValue.prefix(20))\", not a positive number")
                    }
                    next = max(stored, next)
                }
                let result = try await etcd.transaction(compare: [.modRevision(key, is: current?.modRevision ?? 0)],
                                                        success: [.put(key, String(next + 1))])
                if result.succeeded { return letter + String(next) }
            } catch let error as EtcdError where error.code == .outcomeUnknown {
                continue
            } catch let error as EtcdError {
                throw MetadataError(error, while: "allocating a range id")
            } catch let error as MetadataError {
                throw error
            } catch {
                throw MetadataError(.etcd, "allocating a range id: \(error)", underlying: error)
            }
        }
        throw MetadataError(.conflict, "could not allocate a range id after 100 contended attempts")
    }
}
