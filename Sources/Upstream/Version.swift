/// This program's version, in one place: the `User-Agent` every upstream request carries,
/// `registry-mirror --version`, and the status page all read it from here.
public enum RegistryMirrorVersion {
    public static let current = "0.1.0"

    /// `registry-mirror/<version>`, so an upstream's operator can see who is calling.
    public static let userAgent = "registry-mirror/\(current)"
}
