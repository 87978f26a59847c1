import Foundation
import OCI

/// SigV4 query-string presigning ("Authenticating Requests: Using Query Parameters"): a GET
/// URL that anyone holding it may use until it expires, so a client can fetch a blob from the
/// bucket (or a CDN in front of it) itself.
///
/// libcurl signs the requests we send (`CURLOPT_AWS_SIGV4`), but a URL for someone else to
/// send has to be signed here: only `host` is a signed header (a client following a redirect
/// adds its own, such as `Range`) and the payload is `UNSIGNED-PAYLOAD`.
enum S3Presign {
    /// The presigned URL of `key` for `method`, valid for `expiry` from `now` (S3 allows 1 s
    /// to 7 days).
    static func url(method: String = "GET", location: S3Location, key: String, credentials: S3Credentials,
                    expiry: Duration, now: Date) -> String {
        let (scheme, authority, path) = location.address(key: key)
        let stamp = timestamp(now)
        let day = String(stamp.prefix(8))
        let scope = "\(day)/\(location.region)/s3/aws4_request"
        var query = [
            ("X-Amz-Algorithm", "AWS4-HMAC-SHA256"),
            ("X-Amz-Credential", "\(credentials.accessKeyID)/\(scope)"),
            ("X-Amz-Date", stamp),
            ("X-Amz-Expires", String(max(1, min(expiry.components.seconds, 604_800)))),
            ("X-Amz-SignedHeaders", "host"),
        ]
        if let token = credentials.sessionToken { query.append(("X-Amz-Security-Token", token)) }
        let canonicalQuery = String(S3Location.canonicalQuery(query).dropFirst())
        let canonicalRequest = [method, path, canonicalQuery, "host:\(authority)", "", "host", "UNSIGNED-PAYLOAD"].joined(separator: "\n")
        let stringToSign = ["AWS4-HMAC-SHA256", stamp, scope, DigestHasher.digest(of: Array(canonicalRequest.utf8)).hex].joined(separator: "\n")
        var key = Array("AWS4\(credentials.secretAccessKey)".utf8)
        for part in [day, location.region, "s3", "aws4_request"] { key = HMACSHA256.mac(key: key, message: Array(part.utf8)) }
        let signature = HMACSHA256.hex(HMACSHA256.mac(key: key, message: Array(stringToSign.utf8)))
        return "\(scheme)://\(authority)\(path)?\(canonicalQuery)&X-Amz-Signature=\(signature)"
    }

    /// `yyyyMMdd'T'HHmmss'Z'` in UTC, as `X-Amz-Date` wants it.
    static func timestamp(_ date: Date) -> String {
        var time = time_t(date.timeIntervalSince1970.rounded(.down))
        var parts = tm()
        gmtime_r(&time, &parts)
        return String(format: "%04d%02d%02dT%02d%02d%02dZ", Int(parts.tm_year) + 1900, Int(parts.tm_mon) + 1, Int(parts.tm_mday),
                      Int(parts.tm_hour), Int(parts.tm_min), Int(parts.tm_sec))
    }
}
