import Foundation
import Mirror

extension StatusPage {
    /// What the status page shows of a fleet replica.
    struct Fleet: Sendable {
        var replica: String
        var owner: String
        var activity: FleetActivity
        /// Replicas alive within the last 30 s; nil when the index could not be asked.
        var peers: [(replica: String, owner: String, peerURL: String)]?
    }

    static func fleetSection(_ fleet: Fleet) -> String {
        var html = "<section id=\"fleet\"><h2>Fleet</h2><p class=\"sub\">this replica: <code>\(escape(fleet.replica))</code>"
        html += " · leases held \(fleet.activity.leasesHeld) · from peers \(bytes(fleet.activity.bytesFromPeers))"
        html += " · from the store after a peer \(bytes(fleet.activity.bytesFromStore)) · to peers \(bytes(fleet.activity.bytesToPeers))</p>"
        guard let peers = fleet.peers else { return html + "<p class=\"bad\">The index cannot be asked for the replicas.</p></section>" }
        html += "<table><tr><th>Replica</th><th>Peer endpoint</th></tr>"
        for peer in peers {
            let me = peer.owner == fleet.owner ? " <span class=\"muted\">(this one)</span>" : ""
            html += "<tr><td><code>\(escape(peer.replica))</code>\(me)</td><td><code>\(escape(peer.peerURL))</code></td></tr>"
        }
        return html + "</table></section>"
    }
}
