/// A self-signed EC certificate (CN "registry-mirror test stand-in", valid until 2126) with its
/// key, and a key that belongs to neither: PEM files for configuration tests, which check
/// only that the files load and go together.
enum StandInTLS {
    static let certificate = """
        -----BEGIN CERTIFICATE-----
        MIIBvTCCAWOgAwIBAgIUe6paRIG/PUg4spbiieriLJoysY0wCgYIKoZIzj0EAwIw
        KDEmMCQGA1UEAwwdcmVnaXN0cnktbWlycm9yIHRlc3Qgc3RhbmQtaW4wIBcNMjYx
        MjAxMDAwMjU1WhgPMjEyNjExMDcwMDAyNTVaMCgxJjAkBgNVBAMMHXJlZ2lzdHJ5
        LW1pcnJvciB0ZXN0IHN0YW5kLWluMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE
        yVyhK/iaipoXqvAdShmLePNvCgcjZipLt5mGBnZvoBcItvbVRtdQ7kIqHat7Yp+n
        4/Ziz635S+62qs+b1DTfe6NpMGcwHQYDVR0OBBYEFBRNALTKl46/xbEy3UA+OPqI
        8AOtMB8GA1UdIwQYMBaAFBRNALTKl46/xbEy3UA+OPqI8AOtMA8GA1UdEwEB/wQF
        MAMBAf8wFAYDVR0RBA0wC4IJbG9jYWxob3N0MAoGCCqGSM49BAMCA0gAMEUCIH46
        5RaoI148eLgiUL3Y+UBbgoj5FIxl4pq804BkOY22AiEA5I7+b0U1VVBajdLgNSn6
        kIeysbA2MxpxIn9oKwU3dmk=
        -----END CERTIFICATE-----

        """
    static let key = """
        -----BEGIN PRIVATE KEY-----
        MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgBip9VIeNuARRcYFj
        ykyZikKihzhFA6Ro38a6oInX52ehRANCAATJXKEr+JqKmheq8B1KGYt4828KByNm
        Kku3mYYGdm+gFwi29tVG11DuQiodq3tin6fj9mLPrflL7raqz5vUNN97
        -----END PRIVATE KEY-----

        """
    static let otherKey = """
        -----BEGIN PRIVATE KEY-----
        MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgobBfYrICbkoCGMEe
        PRgES3A+bV9GOqSdNlnYhOBOxJmhRANCAASXFD8OMKF8Yd6CFYgGJCtFZ+Z6CDwx
        7h5ADJvxrYwhYw/v6Sim3yxJ9qCw6VX2C+P5RBnAoNVNYObfOFMWnGlI
        -----END PRIVATE KEY-----

        """
}
