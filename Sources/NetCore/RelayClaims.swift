import Primitives

/// What a relaying service covers: every endpoint (`netctl proxy serve`), or one endpoint
/// (a container's monitor, for its own ports).
public enum RelayScope: Hashable, Sendable, CustomStringConvertible {
    case all
    case endpoint(String)
    /// Every endpoint in the network namespace at this path (a container's, on all its
    /// networks).
    case namespace(String)

    /// As state stores it.
    var key: String {
        switch self {
        case .all: return "*"
        case .endpoint(let name): return "endpoint:" + name
        case .namespace(let path): return "netns:" + path
        }
    }

    public var description: String {
        switch self {
        case .all: return "every endpoint"
        case .endpoint(let name): return "endpoint \(name)"
        case .namespace(let path): return "the endpoints in \(path)"
        }
    }

    func covers(_ endpoint: Endpoint) -> Bool {
        switch self {
        case .all: return true
        case .endpoint(let name): return endpoint.name == name
        case .namespace(let path): return endpoint.netns == path
        }
    }
}

/// What one relaying service is to serve now.
public struct RelayAssignment: Sendable {
    /// The relays this process serves, each with the published port it belongs to.
    public var relays: [Relay: PublishedPort]
    /// For a scoped service: the process of `netctl proxy serve` that serves its endpoint
    /// instead (it stands aside until that one stops).
    public var servedBy: ProcessIdentity?
    /// For the shared service: endpoints whose relays their own (scoped) service serves.
    public var skipped: [String: ProcessIdentity]

    /// Whether another process's claim shapes this assignment: its death would change it,
    /// which no change of state announces, so the service asks again now and then.
    public var dependsOnOthers: Bool { servedBy != nil || !skipped.isEmpty }
}

/// Which process relays which endpoint's proxied ports. The rule, stated once:
///
/// - At most one live claim per scope. A second `netctl proxy serve` on one state directory is
///   refused, naming the first; so is a second service scoped to one endpoint.
/// - The shared service (`.all`) relays every endpoint except those a live scoped claim holds.
/// - A scoped service claims its endpoint unless the shared service is live: then the shared
///   one relays it, and the scoped one stands aside until the shared one stops (it asks again
///   on every change of state and now and then).
/// - A claim whose process died is void: the next assignment of any scope replaces it.
///
/// So exactly one process listens on each relay, whichever starts first. Claims live in
/// the state database, so a claim and the routes it decides are read under one lock.
final class RelayClaims {
    private let context: ManagerContext
    private var store: StateStore { context.store }

    init(_ context: ManagerContext) {
        self.context = context
    }

    func assign(_ scope: RelayScope) throws -> RelayAssignment {
        let me = ProcessIdentity.current()
        return try store.transaction {
            let claims = try store.relayClaims().filter { $0.value.isAlive }
            func claim() throws {
                if claims[scope.key] != me { try store.setRelayClaim(scope.key, owner: me) }
            }
            switch scope {
            case .all:
                if let other = claims["*"], other != me { throw NetctlError.relaysClaimed(scope: scope.description, pid: other.pid) }
                try claim()
                var skipped: [String: ProcessIdentity] = [:]
                var relays: [Relay: PublishedPort] = [:]
                for (port, endpoint) in try store.ports() where endpoint.state == .active {
                    let scoped = [RelayScope.endpoint(endpoint.name), .namespace(endpoint.netns)].compactMap { claims[$0.key] }
                    if let owner = scoped.first(where: { $0 != me }) {
                        skipped[endpoint.name] = owner
                        continue
                    }
                    for relay in PortPlan(port, on: endpoint).relays { relays[relay] = port }
                }
                return RelayAssignment(relays: relays, servedBy: nil, skipped: skipped)
            case .endpoint, .namespace:
                if let other = claims[scope.key], other != me { throw NetctlError.relaysClaimed(scope: scope.description, pid: other.pid) }
                if let shared = claims["*"], shared != me {
                    try store.deleteRelayClaim(scope.key, owner: me)  // stood aside: the shared service relays it
                    return RelayAssignment(relays: [:], servedBy: shared, skipped: [:])
                }
                try claim()
                var relays: [Relay: PublishedPort] = [:]
                for (port, endpoint) in try store.ports() where endpoint.state == .active && scope.covers(endpoint) {
                    for relay in PortPlan(port, on: endpoint).relays { relays[relay] = port }
                }
                return RelayAssignment(relays: relays, servedBy: nil, skipped: [:])
            }
        }
    }

    /// Gives up this process's claim on `scope`. Best effort: a claim left behind is void
    /// once the process has gone.
    func release(_ scope: RelayScope) {
        _ = try? store.transaction { try store.deleteRelayClaim(scope.key, owner: .current()) }
    }
}
