/// Where a namespace's published ports live when it is on several networks: the one rule
/// `netctl run`, the netavark front end and any other runtime follow. A mapping whose host
/// address is the gateway of one of its networks stays on that network's endpoint; every
/// other mapping lives on the endpoint that holds the namespace's default route, and moves
/// with it.
extension NetworkManager {
    /// The endpoints in the namespace endpoint `name` is in, it included, in attach order.
    public func endpoints(sharingNamespaceWith name: String) throws -> [Endpoint] {
        let endpoint = try attachments.endpoint(named: name)
        guard let identity = endpoint.namespaceIdentity else { return [endpoint] }
        return try attachments.endpoints(in: identity)
    }

    /// Publishes a namespace's mappings, each on the endpoint the rule above gives it; all or
    /// nothing. `endpoint`: any endpoint of the namespace. `probeHostPorts`: see `publish`.
    @discardableResult
    public func publish(namespaceOf endpoint: String, _ mappings: [PortMapping], backend: PortBackend = .nft,
                        probeHostPorts: Bool = true) throws -> [PublishedPort] {
        guard !mappings.isEmpty else { return [] }
        let all = try endpoints(sharingNamespaceWith: endpoint)
        guard let first = all.first else { return [] }
        let holder = try defaultRouteEndpoint(sharingNamespaceWith: first.name) ?? first
        var byEndpoint: [String: [PortMapping]] = [:]
        for mapping in mappings {
            let pinned = all.first { e in !mapping.hostIP.isEmpty && (e.gateway == mapping.hostIP || e.gateway6 == mapping.hostIP) }
            byEndpoint[(pinned ?? holder).name, default: []].append(mapping)
        }
        var published: [PublishedPort] = []
        do {
            for (name, mappings) in byEndpoint.sorted(by: { $0.key < $1.key }) {
                published += try publish(endpoint: name, mappings, backend: backend, probeHostPorts: probeHostPorts)
            }
        } catch {
            for port in published {
                let mapping = PortMapping(hostIP: port.hostIP, hostPort: port.hostPort, containerPort: port.containerPort, proto: port.proto)
                _ = try? unpublish(endpoint: port.endpoint, [(text: "", mappings: [mapping])])
            }
            throw error
        }
        return published
    }

    /// After the namespace's networks changed: ports not pinned to a network move to the
    /// endpoint that holds its default route now.
    public func settlePorts(namespaceOf endpoint: String) throws {
        let all = try endpoints(sharingNamespaceWith: endpoint)
        guard let first = all.first, let holder = try defaultRouteEndpoint(sharingNamespaceWith: first.name) else { return }
        for e in all where e.id != holder.id {
            let ports = try self.ports(endpoint: e.name)
            let pinned = ports.contains { $0.hostIP == e.gateway || $0.hostIP == e.gateway6 }
            if !ports.isEmpty && !pinned { try movePorts(from: e.name, to: holder.name) }
        }
    }

    /// Before `endpoint` leaves its namespace: its ports move to the endpoint that will hold
    /// the default route next. False when it has ports and no other endpoint can take them
    /// (they would go with it).
    public func movePortsBeforeDetach(_ endpoint: String) throws -> Bool {
        guard try !ports(endpoint: endpoint).isEmpty else { return true }
        guard let next = try defaultRouteEndpoint(sharingNamespaceWith: endpoint, excluding: endpoint) else { return false }
        try movePorts(from: endpoint, to: next.name)
        return true
    }
}
