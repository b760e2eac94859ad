import Firewall
import Glibc
import Logging
import NetCore
import Primitives
import Synchronization

/// Keeps netctl's firewall whole while the agent runs. It holds the owned guard table (no
/// flush can remove it, so 127/8 stays unreachable from the wire even while the main table
/// is gone), and listens to nftables' notifications: when something deletes from netctl's
/// table, the table is checked against state at the end of that transaction (or after 10 ms
/// of quiet) and rebuilt if it is not whole. Its own thread, with its own state connection.
final class FirewallWatch: Sendable {
    let stateDirectory: String
    let logger: Logger
    private let running = Atomic<Bool>(true)
    private let thread = Mutex<pthread_t?>(nil)

    init(stateDirectory: String, logger: Logger) {
        self.stateDirectory = stateDirectory
        self.logger = logger
    }

    func start() throws {
        // Opened here, so a failure stops the agent's start rather than passing unseen.
        let monitor = try NftMonitor()
        let manager = try NetworkManager(stateDirectory: stateDirectory, logger: logger)
        let guardTable = try manager.ownedGuard()
        nonisolated(unsafe) let handed = (monitor, manager, guardTable)  // to the thread, which alone uses them from now on
        let started = try startThread("the firewall watch") { [self] in
            withExtendedLifetime(handed.2) { loop(handed.0, handed.1) }
        }
        thread.withLock { $0 = started }
    }

    func stop() {
        running.store(false, ordering: .relaxed)
        if let started = thread.withLock({ $0 }) { pthread_join(started, nil) }
    }

    private func loop(_ monitor: NftMonitor, _ manager: NetworkManager) {
        repair(manager)  // a flush while no agent ran
        var pending = false
        while running.load(ordering: .relaxed) {
            let events = monitor.next(milliseconds: pending ? 10 : 250)
            if events.isEmpty {
                if pending { repair(manager); pending = false }
                continue
            }
            for event in events {
                switch event {
                case .removal(let table, let family) where table == PublishRuleset.table && family == PublishRuleset.family:
                    pending = true
                case .overrun:
                    pending = true
                case .generation where pending:
                    repair(manager)
                    pending = false
                default:
                    break
                }
            }
        }
    }

    private func repair(_ manager: NetworkManager) {
        do {
            if try manager.repairFirewall() { logger.notice("netctl's nftables table was changed by another program; put back from state") }
        } catch {
            logger.error("checking netctl's nftables table: \(error)")
        }
    }
}
