// Blocking calls into the core (open, shutdown, waitApplied) run on a dedicated
// dispatch queue; the calling task is suspended on a checked continuation meanwhile, so
// no thread of Swift's cooperative pool is held while the core blocks.
import Foundation

enum TernBlocking {
    /// The queue of blocking core calls. Concurrent: a shutdown waiting for its timeout
    /// does not hold back another instance's open.
    static let queue = DispatchQueue(label: "dev.tern.blocking", qos: .utility, attributes: .concurrent)

    /// Runs `body` on `queue` and returns its result. When the calling task is cancelled
    /// and `cancelled` is given, returns `cancelled` at once instead (`body`, if it has
    /// started, finishes on the queue; its result is dropped); without `cancelled` the
    /// call is not cancellable and its result is always returned.
    ///
    /// `T` is not constrained to `Sendable`: the generated records are `Sendable` only
    /// with Swift 6 compilers. Each value crosses threads once, handed over, never shared.
    static func run<T>(cancelled: T? = nil, _ body: @escaping @Sendable () -> T) async -> T {
        if let value = cancelled, Task.isCancelled { return value }
        let once = ResumeOnce<T>()
        return await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<T, Never>) in
                once.install(continuation)
                queue.async { once.resume(body()) }
            }
        } onCancel: {
            if let value = cancelled { once.resume(value) }
        }
    }
}

/// Resumes a continuation exactly once, with the first value offered — even when the
/// value comes before the continuation is installed (a cancellation handler runs
/// concurrently with the operation).
///
/// `@unchecked Sendable`: every stored property is read and written under `lock`.
final class ResumeOnce<T>: @unchecked Sendable {
    private let lock = NSLock()
    private var continuation: CheckedContinuation<T, Never>?
    private var early: T?
    private var resumed = false

    /// Installs the continuation; resumes it at once when a value came first.
    func install(_ c: CheckedContinuation<T, Never>) {
        lock.lock()
        if let value = early {
            early = nil
            resumed = true
            lock.unlock()
            c.resume(returning: value)
            return
        }
        continuation = c
        lock.unlock()
    }

    /// Offers `value`; only the first one offered is used.
    func resume(_ value: T) {
        lock.lock()
        if resumed || early != nil {
            lock.unlock()
            return
        }
        guard let c = continuation else {
            early = value
            lock.unlock()
            return
        }
        continuation = nil
        resumed = true
        lock.unlock()
        c.resume(returning: value)
    }
}

/// A lock-protected flag.
///
/// `@unchecked Sendable`: `value` is read and written under `lock` only.
final class TernFlag: @unchecked Sendable {
    private let lock = NSLock()
    private var value = false

    /// Sets the flag; returns whether it was clear (i.e. this call set it).
    @discardableResult
    func set() -> Bool {
        lock.lock()
        defer { lock.unlock() }
        let was = value
        value = true
        return !was
    }

    /// Whether it is set.
    var isSet: Bool {
        lock.lock()
        defer { lock.unlock() }
        return value
    }
}
