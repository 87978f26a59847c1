import Foundation
import Testing
import Upstream

/// The first-byte deadline of an upstream transfer counts the wait for a transfer slot: with
/// every slot held by a hung upstream, a request fails at its deadline with "busy", instead of
/// waiting for a slot and then starting a deadline of its own (past containerd's 30 s).
@Suite struct TransferSlotTests {
    @Test func slotWaitCountsTowardTheHeaderDeadline() async throws {
        let image = FaultImage.make(layerSizes: [4096])
        let upstream = try FaultUpstream.start(image: image)
        defer { Task { await upstream.stop() } }
        let layer = image.layers[0].digest
        upstream.setFault(.hang, for: layer)
        let path = "/v2/\(FaultImage.repository)/blobs/\(layer)"
        let url = try #require(URL(string: "http://\(upstream.host)\(path)"))

        let transport = CurlTransport(maxConcurrent: 1)
        var holding = TransferLimits()
        holding.headerTimeout = .seconds(20)
        // The one slot goes to a transfer the upstream never answers.
        let holder = Task { try await transport.perform(HTTPExchange(method: "GET", url: url), limits: holding, sink: DiscardingSink()) }
        defer { holder.cancel() }
        try await waitUntil("the fake to hold the first transfer") { upstream.count("GET", path) >= 1 }

        var waiting = TransferLimits()
        waiting.headerTimeout = .seconds(2)
        let started = ContinuousClock.now
        do {
            let head = try await transport.perform(HTTPExchange(method: "GET", url: url), limits: waiting, sink: DiscardingSink())
            Issue.record("the second transfer got an answer (\(head.status)) while the only slot was held")
        } catch let error as TransportError {
            #expect(error.kind == .busy, "the second transfer failed otherwise: \(error.message)")
        }
        let waited = ContinuousClock.now - started
        // Not a speed claim: before the fix it waited 20 s for the slot, then its own 2 s.
        #expect(waited < .seconds(15), "the second transfer gave up only after \(waited)")
        #expect(upstream.count("GET", path) == 1, "the second transfer reached the upstream")
        holder.cancel()
        _ = await holder.result
    }
}

@Suite struct AsyncSemaphoreTests {
    @Test func timedWaitsNeverLoseOrInventUnits() async {
        let semaphore = AsyncSemaphore(2)
        // Many waiters with short deadlines race the holders' signals; afterwards exactly
        // the two units must be free again, no more and no fewer.
        await withTaskGroup(of: Void.self) { group in
            for i in 0..<200 {
                group.addTask {
                    let deadline = ContinuousClock.now + .milliseconds(i % 7)
                    if await semaphore.wait(until: deadline) {
                        await Task.yield()
                        semaphore.signal()
                    }
                }
            }
        }
        #expect(await semaphore.wait(until: .now + .seconds(5)))
        #expect(await semaphore.wait(until: .now + .seconds(5)))
        #expect(await !semaphore.wait(until: .now + .milliseconds(50)), "a third unit appeared")
        semaphore.signal()
        semaphore.signal()
    }

    @Test func cancelledWaitGivesUpWithoutAUnit() async {
        let semaphore = AsyncSemaphore(0)
        let waiter = Task { await semaphore.wait(until: .now + .seconds(60)) }
        waiter.cancel()
        #expect(await waiter.value == false)
        semaphore.signal()
        #expect(await semaphore.wait(until: .now + .seconds(5)), "the signalled unit went to the cancelled waiter")
    }
}
