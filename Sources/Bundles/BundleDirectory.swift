#if canImport(Glibc)
import Glibc
#endif

/// A bundle given as a directory, read without following symbolic links.
///
/// Every file is opened one path component at a time below the root, each with
/// `O_NOFOLLOW`, so neither a linked file nor a linked folder on the way can make the
/// import read `/etc/shadow` (and, given the right digest, serve it as a blob). The tar
/// path likewise never follows a link out of the archive. The root itself is the
/// operator's choice and may be a link.
struct BundleDirectory {
    let root: String

    /// The regular file at `relative` ("blobs/sha256/…"), open for reading (the caller
    /// closes it); nil when it does not exist. A link, a `..`, or anything but a regular
    /// file is refused with an error naming the path.
    func openRegularFile(_ relative: String) throws(BundleError) -> Int32? {
        let components = relative.split(separator: "/", omittingEmptySubsequences: false).map(String.init)
        guard components.allSatisfy({ !$0.isEmpty && $0 != "." && $0 != ".." }) else {
            throw BundleError("bundle path \(relative.prefix(200)) is not a plain path inside \(root)")
        }
        var current = open(root, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard current >= 0 else { throw BundleError("cannot open \(root): \(String(cString: strerror(errno)))") }
        var walked = root
        for (i, component) in components.enumerated() {
            walked += "/" + component
            // O_NONBLOCK on the last: opening a FIFO must not hang the import (it is refused below).
            let flags = O_RDONLY | O_NOFOLLOW | O_CLOEXEC | (i == components.count - 1 ? O_NONBLOCK : O_DIRECTORY)
            let next = openat(current, component, flags)
            let code = errno
            if next < 0 {
                defer { close(current) }
                if code == ENOENT { return nil }
                var info = stat()
                if fstatat(current, component, &info, AT_SYMLINK_NOFOLLOW) == 0, info.st_mode & S_IFMT == S_IFLNK {
                    throw BundleError("bundle refused: \(walked) is a symbolic link; a directory bundle is read without following links")
                }
                throw BundleError("cannot open \(walked): \(String(cString: strerror(code)))")
            }
            close(current)
            current = next
        }
        var info = stat()
        guard fstat(current, &info) == 0, info.st_mode & S_IFMT == S_IFREG else {
            close(current)
            throw BundleError("bundle refused: \(walked) is not a regular file")
        }
        return current
    }

    /// The bytes of a small file (`oci-layout`, `index.json`), at most `limit`; nil when it does not exist.
    func contents(_ relative: String, limit: Int) throws(BundleError) -> [UInt8]? {
        guard let file = try openRegularFile(relative) else { return nil }
        defer { close(file) }
        var bytes: [UInt8] = []
        let pump = descriptorChunks(file, path: root + "/" + relative)
        try pump { (chunk) throws(BundleError) in
            guard bytes.count + chunk.count <= limit else { throw BundleError("\(root)/\(relative) is larger than \(limit) bytes") }
            bytes.append(contentsOf: chunk)
        }
        return bytes
    }

    /// Whether anything, even a link, is at `relative`: so that a linked blob is refused
    /// when it is read, not skipped as absent.
    func hasEntry(_ relative: String) -> Bool {
        var info = stat()
        return lstat(root + "/" + relative, &info) == 0
    }

    /// Refuses `relative` if, once the file system follows its links, it is outside the root.
    /// For a `docker save` directory, whose layers may be links to one another.
    func checkInside(_ relative: String) throws(BundleError) {
        guard let base = realpath(root, nil) else { return }
        defer { free(base) }
        guard let resolved = realpath(root + "/" + relative, nil) else { return }  // missing: reported where it is read
        defer { free(resolved) }
        let inside = String(cString: base)
        let target = String(cString: resolved)
        guard target.hasPrefix(inside == "/" ? "/" : inside + "/") else {
            throw BundleError("bundle refused: \(root)/\(relative) leads outside the bundle, to \(target)")
        }
    }
}
