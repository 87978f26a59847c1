import Foundation
import Logging
import OCI
@testable import RegistryMirror
@testable import S3Store
import Testing

/// `serve`'s scheduled sweep (`storage.s3.upload_sweep`) against moto, its clock moved where
/// moto's fixed `Initiated` dates need it.
@Suite(.serialized) struct UploadSweepServiceTests {
    @Test("a sweep keeps uploads receiving parts, aborts idle ones, and a partless upload only once an earlier sweep saw it")
    func partlessUploadsNeedTwoSightings() async throws {
        let moto = try await MotoServer()
        defer { moto.stop() }
        let store = moto.store(bucket: "scheduled", prefix: "mirror")
        try await store.createBucket()
        let withPart = try await S3PresignTests.leaveUpload(in: store, named: "with a part")
        // A writer between CreateMultipartUpload and its first part.
        let created = try await store.connection.send(S3Request(method: "POST", key: store.key(of: DigestHasher.digest(of: Array("partless".utf8))),
                                                                query: [("uploads", "")]))
        let partless = try #require(S3XML.value("UploadId", in: created.text))

        let now = UploadSweepService(store: store, age: .seconds(3600), interval: .seconds(3600), logger: Logger(label: "test"))
        var later = now
        later.now = { Date().addingTimeInterval(7200) }

        var seen: Set<String> = []
        #expect(await now.sweepOnce(partlessBefore: &seen) == 0, "a fresh part, or a partless upload seen once, was swept")
        #expect(seen == [partless])
        #expect(Set(try await store.pendingUploads().map(\.uploadID)) == [withPart, partless])

        // Two hours on: the part is idle; the partless upload is seen a second time.
        var fresh: Set<String> = []
        #expect(await later.sweepOnce(partlessBefore: &fresh) == 1, "only the idle upload with a part goes on a first sighting")
        #expect(try await store.pendingUploads().map(\.uploadID) == [partless])
        #expect(await later.sweepOnce(partlessBefore: &seen) == 1)
        #expect(try await store.pendingUploads().isEmpty)
        #expect(seen.isEmpty)
    }
}
