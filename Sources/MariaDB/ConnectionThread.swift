import CMariaDB
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// The thread that owns one connection: Connector/C's blocking calls run here, never on Swift's
/// cooperative pool.
///
/// It is also a `TaskExecutor`. A caller that runs a whole unit of work with this executor
/// preferred (`withTaskExecutorPreference(connection.executor)`) executes on this thread, so each
/// driver call runs inline, with no thread hop at all — as a blocking C client would. Callers that do
/// not opt in pay one hop here and one back per call.
///
/// `@unchecked Sendable`: all mutable state (`queue`, `stopping`) is guarded by `mutex`; `thread`
/// is written once before any job can run and only compared afterwards.
final class ConnectionThread: TaskExecutor, @unchecked Sendable {
    private enum Work {
        case job(UnownedJob)
        case closure(() -> Void)
    }

    private var mutex = pthread_mutex_t()
    private var condition = pthread_cond_t()
    private var queue: [Work] = []
    private var head = 0
    private var stopping = false
    /// Whether the thread is (about to be) blocked in `pthread_cond_wait`; only then does a push signal.
    private var sleeping = false
    private var thread = pthread_t()
    /// The thread's name as `top -H`, `pidstat -t` and `perf` show it (Linux keeps 15 bytes).
    private let name: String

    init(name: String) {
        self.name = String(decoding: name.utf8.prefix(15).filter { $0 >= 0x20 && $0 < 0x7F }, as: UTF8.self)
        pthread_mutex_init(&mutex, nil)
        pthread_cond_init(&condition, nil)
        let box = Unmanaged.passRetained(self)
        var attributes = pthread_attr_t()
        pthread_attr_init(&attributes)
        pthread_attr_setstacksize(&attributes, 2 << 20) // async code may run here too (executor preference)
        let rc = pthread_create(&thread, &attributes, { raw in
            let me = Unmanaged<ConnectionThread>.fromOpaque(raw!).takeRetainedValue()
            me.loop()
            return nil
        }, box.toOpaque())
        pthread_attr_destroy(&attributes)
        precondition(rc == 0, "cannot start a connection thread: \(rc)")
        pthread_detach(thread)
    }

    deinit {
        pthread_cond_destroy(&condition)
        pthread_mutex_destroy(&mutex)
    }

    /// Whether the caller runs on this thread.
    var isCurrent: Bool { pthread_equal(pthread_self(), thread) != 0 }

    func enqueue(_ job: consuming ExecutorJob) {
        push(.job(UnownedJob(job)))
    }

    /// Runs `body` on this thread.
    func submit(_ body: @escaping () -> Void) {
        push(.closure(body))
    }

    /// Ends the thread after the work already queued.
    func stop() {
        pthread_mutex_lock(&mutex)
        stopping = true
        pthread_cond_signal(&condition)
        pthread_mutex_unlock(&mutex)
    }

    /// Queues `work`. The signal goes out after the unlock, and only to a sleeping thread: signalled
    /// under the lock, the woken thread would find the mutex still held and block once more on it (a
    /// second context switch per hop); a busy thread needs no signal (no futex call) — it takes the work
    /// before it next sleeps. A waiter that set `sleeping` under the mutex is inside `pthread_cond_wait`
    /// by the time a pusher can read the flag, so the signal cannot be lost.
    private func push(_ work: Work) {
        pthread_mutex_lock(&mutex)
        queue.append(work)
        let wake = sleeping
        pthread_mutex_unlock(&mutex)
        if wake { pthread_cond_signal(&condition) }
    }

    private func loop() {
        // Without a name it inherits its creator's (often a Swift pool thread's): profiles could not
        // tell the driver's threads from the pool's.
        shardbank_set_thread_name(name)
        while true {
            pthread_mutex_lock(&mutex)
            while head == queue.count && !stopping {
                sleeping = true
                pthread_cond_wait(&condition, &mutex)
                sleeping = false
            }
            if head == queue.count && stopping {
                pthread_mutex_unlock(&mutex)
                return
            }
            let work = queue[head]
            head += 1
            if head == queue.count {
                queue.removeAll(keepingCapacity: true)
                head = 0
            }
            pthread_mutex_unlock(&mutex)
            switch work {
            case .job(let job): job.runSynchronously(on: asUnownedTaskExecutor())
            case .closure(let body): body()
            }
        }
    }
}
