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

    public init(endpoint: URL, bucket: String) {
        self.endpoint = endpoint
        self.bucket = bucket
    }

    /// The S3 store these settings name, behind a spool in `dataDirectory`.
    func makeStore(dataDirectory: String, environment: [String: String] = ProcessInfo.processInfo.environment) throws -> any BlobStore {
        let credentials: S3Credentials
        if let file = credentialsFile {
            credentials = try S3Credentials.load(file: file)
        } else if let fromEnvironment = S3Credentials.fromEnvironment(environment) {
            credentials = fromEnvironment
        } else {
            throw MirrorSetupError("storage.s3: no credentials; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or storage.s3.credentials_file")
        }
        let location = S3Location(endpoint: endpoint, region: region, bucket: bucket, prefix: prefix, pathStyle: pathStyle)
        return try SpoolingStore(inner: S3Store(location: location, credentials: credentials), spoolDirectory: dataDirectory + "/spool")
    }
}

extension MirrorConfiguration {
    /// Reads `storage.backend` and `storage.s3.*` (key paths listed in `keys`).
    mutating func applyStorage(_ values: [String: String], problems: inout [String]) {
        let backend = values["storage.backend"]?.lowercased() ?? "filesystem"
        let given = values.keys.filter { $0.hasPrefix("storage.s3.") }.sorted()
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
            s3Storage = settings
        default:
            problems.append("storage.backend: must be filesystem or s3; got \"\(backend)\"")
        }
    }
}
