import Foundation

/// The tables the benchmark prints, ratios included, and the same figures as JSON.
enum Report {
    static func print(latency: [Bench.Latency], traffic: [Bench.Traffic], repeats: Int) {
        Swift.print("\nMapping add/remove latency, median of \(repeats) (ms)")
        row(["mappings before", "publish", "unpublish", "element add", "element remove", "rule-per-port append"])
        for l in latency {
            row(["\(l.existing)", f(l.publishMs), f(l.unpublishMs), f(l.elementAddMs), f(l.elementRemoveMs), f(l.ruleAppendMs)])
        }
        if let first = latency.first, let last = latency.last {
            row(["10,000th / 1st", ratio(last.publishMs, first.publishMs), ratio(last.unpublishMs, first.unpublishMs),
                 ratio(last.elementAddMs, first.elementAddMs), ratio(last.elementRemoveMs, first.elementRemoveMs),
                 ratio(last.ruleAppendMs, first.ruleAppendMs)])
        }
        Swift.print("\nTraffic from a client namespace routed through the host; each phase alternates the direct path and")
        Swift.print("the mapped path round by round; ratios are medians of per-round ratios to the direct path")
        row(["path", "phase", "conn/s", "p50 ms", "p99 ms", "Gbit/s", "conn/s ratio", "p99 ratio", "Gbit/s ratio"])
        for t in traffic {
            row([t.path, t.phase, String(format: "%.0f", t.cps), f(t.p50Ms), f(t.p99Ms), f(t.gbps),
                 String(format: "%.2fx", t.cpsRatio), String(format: "%.2fx", t.p99Ratio), String(format: "%.2fx", t.gbpsRatio)])
        }
        func compare(_ path: String, _ one: String, _ many: String, _ label: String) {
            guard let a = traffic.first(where: { $0.path == path && $0.phase == one }),
                  let b = traffic.first(where: { $0.path == path && $0.phase == many }) else { return }
            Swift.print("\(label): conn/s \(ratio(b.cpsRatio, a.cpsRatio)), Gbit/s \(ratio(b.gbpsRatio, a.gbpsRatio)) (each against its own direct path)")
        }
        Swift.print("")
        compare("nft", "1 mapping", "10,000 mappings", "nft DNAT, 10,000 mappings vs 1")
        compare("rule-per-port", "1 rule", "10,000 rules", "one rule per port, 10,000 rules vs 1")
    }

    static func json(latency: [Bench.Latency], traffic: [Bench.Traffic]) throws -> String {
        struct Output: Encodable { let latency: [Bench.Latency]; let traffic: [Bench.Traffic] }
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        return String(decoding: try encoder.encode(Output(latency: latency, traffic: traffic)), as: UTF8.self)
    }

    private static func f(_ value: Double) -> String { String(format: value < 10 ? "%.3f" : "%.1f", value) }
    private static func ratio(_ a: Double, _ b: Double) -> String { String(format: "%.2fx", a / b) }

    private static func row(_ cells: [String]) {
        let widths = [16, 16, 10, 10, 10, 10, 12, 10, 12]
        Swift.print(zip(cells, widths).map { $0.0.padding(toLength: max($0.1, $0.0.count), withPad: " ", startingAt: 0) }.joined(separator: " "))
    }
}
