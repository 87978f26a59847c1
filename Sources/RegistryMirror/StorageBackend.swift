import ContentStore
import Foundation
import S3Store

/// `storage.backend: s3`: blobs in an S3-compatible bucket (the index stays local). Fills
/// spool to `<data-dir>/spool` while they upload, so clients stream a download as it arrives.
public struct S3StorageSettings: Sendable, Equatable {
    /// `storage.s3.endpoint`: scheme, host and port (`https://s3.us-east-1.amazonaws.com`).
    public var endpoint: URL
    /// `storage.s3.region`: the signing region.
    public var region = "us-east-1"
    /// `storage.s3.bucket`.
    public var bucket: String
    /// `storage.s3.prefix`: keys start with it (`<prefix>/blobs/sha256/<hex>`).
    public var prefix = ""
    /// `storage.s3.path_style`: the bucket in the path (MinIO, Ceph, moto) instead of the host (AWS).
    public var pathStyle = false
    /// `storage.s3.credentials_file`: an AWS shared-credentials file (profile `default`).
    /// Without it, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` and `AWS_SESSION_TOKEN`.
    public var credentialsFile: String?
    /// `storage.s3.redirect`: answer a GET of a stored blob with a 307 to a presigned URL of
    /// its object, so the bytes leave from S3 (or a CDN in front of it), not the mirror.
    public var redirect = false
    /// `storage.s3.redirect_expiry`: how long a presigned URL is valid (distribution's 20 m).
    public var redirectExpiry: Duration = .seconds(20 * 60)
    /// `storage.s3.upload_sweep.older_than`: multipart uploads idle this long are aborted.
    public var uploadSweepAge: Duration = .seconds(24 * 3600)
    /// `storage.s3.upload_sweep.interval`: how often `serve` sweeps (and once at start); zero: never.
    public var uploadSweepInterval: Duration = .seconds(3600)
    /// `storage.local_cache.max_size`: keep hot blobs on local disk too (`TieredStore`), up to
    /// this many bytes, sent with sendfile. Nil: every read goes to the bucket.
    public var localCacheMaxBytes: Int64?

    public init(endpoint: URL, bucket: String) {
        self.endpoint = endpoint
        self.bucket = bucket
    }

    /// The S3 store these settings name, behind the local disk tier (`<data-dir>/local-cache`)
    /// when `localCacheMaxBytes` is set, else behind a spool in `<data-dir>/spool`.
    func makeStore(dataDirectory: String, environment: [String: String] = ProcessInfo.processInfo.environment) throws -> (spooled: any BlobStore, s3: S3Store) {
        let store = try makeS3Store(environment: environment)
        if let localCacheMaxBytes {
            return (try TieredStore(remote: store, localRoot: dataDirectory + "/local-cache", maxBytes: localCacheMaxBytes), store)
        }
        return (try SpoolingStore(inner: store, spoolDirectory: dataDirectory + "/spool"), store)
    }

    /// The bucket itself, for the upload sweep and readiness.
    func makeS3Store(environment: [String: String] = ProcessInfo.processInfo.environment) throws -> S3Store {
        let credentials: S3Credentials
        if let file = credentialsFile {
            credentials = try S3Credentials.load(file: file)
        } else if let fromEnvironment = S3Credentials.fromEnvironment(environment) {
            credentials = fromEnvironment
        } else {
            throw MirrorSetupError("storage.s3: no credentials; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or storage.s3.credentials_file")
        }
        let location = S3Location(endpoint: endpoint, region: region, bucket: bucket, prefix: prefix, pathStyle: pathStyle)
        return S3Store(location: location, credentials: credentials, redirectExpiry: redirect ? redirectExpiry : nil)
    }

    /// `gc`'s sweep: aborts (with `dryRun`, counts) the multipart uploads idle longer than
    /// `uploadSweepAge`, as `UploadSweepService` does on its schedule.
    public func sweepIdleUploads(dryRun: Bool) async throws -> Int {
        let store = try makeS3Store()
        if dryRun { return try await store.idleUploads(olderThan: uploadSweepAge).count }
        return try await store.sweepIdleUploads(olderThan: uploadSweepAge)
    }
}

extension MirrorConfiguration {
    /// Reads `storage.backend` and `storage.s3.*` (key paths listed in `keys`).
    mutating func applyStorage(_ values: [String: String], problems: inout [String]) {
        let backend = values["storage.backend"]?.lowercased() ?? "filesystem"
        let given = values.keys.filter { $0.hasPrefix("storage.s3.") || $0.hasPrefix("storage.local_cache.") }.sorted()
        switch backend {
        case "filesystem":
            if !given.isEmpty { problems.append("\(given.joined(separator: ", ")): set only with storage.backend: s3") }
            s3Storage = nil
        case "s3":
            let endpointText = values["storage.s3.endpoint"] ?? ""
            guard let endpoint = URL(string: endpointText), ["http", "https"].contains(endpoint.scheme ?? ""), endpoint.host != nil,
                  endpoint.path.isEmpty || endpoint.path == "/" else {
                problems.append("storage.s3.endpoint: must be an http or https URL with a host and no path; got \"\(endpointText)\"")
                return
            }
            guard let bucket = values["storage.s3.bucket"], !bucket.isEmpty, !bucket.contains("/") else {
                problems.append("storage.s3.bucket: must name a bucket")
                return
            }
            var settings = S3StorageSettings(endpoint: endpoint, bucket: bucket)
            if let region = values["storage.s3.region"] {
                if region.isEmpty || region.contains(":") { problems.append("storage.s3.region: must be a region like us-east-1; got \"\(region)\"") } else { settings.region = region }
            }
            if let prefix = values["storage.s3.prefix"] { settings.prefix = prefix }
            if let v = values["storage.s3.path_style"] { settings.pathStyle = Self.bool(v, "storage.s3.path_style", &problems) ?? false }
            if let file = values["storage.s3.credentials_file"] {
                if FileManager.default.isReadableFile(atPath: file) { settings.credentialsFile = file } else {
                    problems.append("storage.s3.credentials_file: \(file) cannot be read")
                }
            }
            if let v = values["storage.local_cache.max_size"] {
                if let size = ByteSize.parse(v), size > 0 { settings.localCacheMaxBytes = size } else {
                    problems.append("storage.local_cache.max_size: must be a size like 200GiB; got \"\(v)\"")
                }
            }
            if let v = values["storage.s3.redirect"] { settings.redirect = Self.bool(v, "storage.s3.redirect", &problems) ?? false }
            if let v = values["storage.s3.redirect_expiry"] {
                // SigV4 presigned URLs live at least a second and at most 7 days.
                if let d = UpstreamSpec.duration(v), d >= .seconds(1), d <= .seconds(7 * 24 * 3600) { settings.redirectExpiry = d } else {
                    problems.append("storage.s3.redirect_expiry: must be a duration from 1s to 168h (7 days) like 20m; got \"\(v)\"")
                }
            }
            if let v = values["storage.s3.upload_sweep.older_than"] {
                if let d = UpstreamSpec.duration(v), d >= .seconds(1) { settings.uploadSweepAge = d } else {
                    problems.append("storage.s3.upload_sweep.older_than: must be a duration like 24h (at least 1s); got \"\(v)\"")
                }
            }
            if let v = values["storage.s3.upload_sweep.interval"] {
                if let d = UpstreamSpec.duration(v) { settings.uploadSweepInterval = d } else {
                    problems.append("storage.s3.upload_sweep.interval: must be a duration like 1h, or 0 for no scheduled sweep; got \"\(v)\"")
                }
            }
            s3Storage = settings
        default:
            problems.append("storage.backend: must be filesystem or s3; got \"\(backend)\"")
        }
    }
}
