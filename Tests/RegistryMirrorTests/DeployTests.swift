import Foundation
import RegistryMirror
import Testing
import Yams

/// deploy/: the systemd unit, the container image's Dockerfile, the Kubernetes manifests and
/// the compose file. No init system or container engine runs here, so these check what can
/// be checked without one: systemd's own verifier, and that the files agree with each other,
/// with scripts/ and with the parser.
@Suite struct DeployTests {
    // MARK: systemd

    static let unit = "deploy/registry-mirror.service"

    @Test func unitIsHardened() throws {
        let lines = Set(try ShippedFiles.text(Self.unit).split(separator: "\n").map(String.init))
        for setting in ["DynamicUser=yes", "StateDirectory=registry-mirror", "NoNewPrivileges=yes", "ProtectSystem=strict",
                        "KillSignal=SIGTERM", "TimeoutStopSec=60s"] {
            #expect(lines.contains(setting), "\(Self.unit) lacks \(setting)")
        }
    }

    /// The unit as installed, but with ExecStart's binary at the debug build (verify checks
    /// that the binary exists, and /usr/local/bin/registry-mirror does not here).
    static func unitCopy(in dir: TemporaryDirectory, change: (String) -> String = { $0 }) throws -> String {
        guard FileManager.default.isExecutableFile(atPath: Tools.mirrorBinary) else {
            throw ShippedFileError("\(Tools.mirrorBinary) is missing: run `swift build --build-tests` first")
        }
        let text = try ShippedFiles.text(unit).replacingOccurrences(of: "/usr/local/bin/registry-mirror", with: Tools.mirrorBinary)
        let path = dir.path + "/registry-mirror.service"
        try change(text).write(toFile: path, atomically: true, encoding: .utf8)
        return path
    }

    @Test(.enabled(if: Tools.find("systemd-analyze") != nil, "systemd-analyze is not installed"))
    func systemdAcceptsTheUnit() throws {
        let analyze = try #require(Tools.find("systemd-analyze"))
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let unit = try Self.unitCopy(in: dir)
        // verify prints a line for every unknown key or bad value, even those it only warns about.
        let verify = try Tools.run(analyze, ["verify", unit])
        #expect(verify.status == 0 && verify.stdout.isEmpty && verify.stderr.isEmpty, "\(verify)")
        // Exposure 1.8 of 10 when written; fail if hardening is lost.
        let security = try Tools.run(analyze, ["security", "--offline=true", "--threshold=20", unit])
        #expect(security.status == 0, "\(security)")

        // The same checks refuse a damaged unit, so a pass above means something. verify only
        // warns (exit 0) about these, hence the empty-output check above.
        let broken = try Self.unitCopy(in: dir) { $0.replacingOccurrences(of: "NoNewPrivileges=yes", with: "NoNewPrivileges=maybe\nPrivateTmpp=yes") }
        let refused = try Tools.run(analyze, ["verify", broken])
        #expect(refused.stderr.contains("maybe") && refused.stderr.contains("PrivateTmpp"), "\(refused)")
        let exposed = try Self.unitCopy(in: dir) { text in
            text.split(separator: "\n").filter { !$0.hasPrefix("Protect") && !$0.hasPrefix("Private") && !$0.hasPrefix("Restrict") }.joined(separator: "\n")
        }
        #expect(try Tools.run(analyze, ["security", "--offline=true", "--threshold=20", exposed]).status != 0)
    }

    // MARK: Dockerfile

    /// A Dockerfile's instructions, continuation lines joined, comments dropped, split into stages.
    struct Dockerfile {
        struct Instruction {
            let keyword: String
            let arguments: String
        }
        var stages: [[Instruction]] = []

        init(_ text: String) {
            var logical: [String] = []
            var current = ""
            for raw in text.split(separator: "\n", omittingEmptySubsequences: false) {
                let line = raw.trimmingCharacters(in: .whitespaces)
                if line.hasPrefix("#") { continue }
                if line.hasSuffix("\\") {
                    current += line.dropLast() + " "
                } else {
                    current += line
                    if !current.trimmingCharacters(in: .whitespaces).isEmpty { logical.append(current) }
                    current = ""
                }
            }
            for line in logical {
                let keyword = String(line.prefix { !$0.isWhitespace }).uppercased()
                let instruction = Instruction(keyword: keyword, arguments: line.dropFirst(keyword.count).trimmingCharacters(in: .whitespaces))
                if keyword == "FROM" { stages.append([]) }
                if !stages.isEmpty { stages[stages.count - 1].append(instruction) }
            }
        }

        static func words(_ text: String) -> [String] { text.split(whereSeparator: \.isWhitespace).map(String.init) }

        /// The package names of every `apt-get install` in a stage (options dropped).
        static func aptPackages(_ stage: [Instruction]) -> [String] {
            var packages: [String] = []
            for run in stage where run.keyword == "RUN" {
                for command in run.arguments.components(separatedBy: "&&") {
                    let words = words(command)
                    guard let install = words.firstIndex(of: "install"), words[..<install].contains("apt-get") else { continue }
                    packages += words[(install + 1)...].filter { !$0.hasPrefix("-") }
                }
            }
            return packages
        }

        static func arguments(_ stage: [Instruction], _ keyword: String) -> [String] {
            stage.filter { $0.keyword == keyword }.map(\.arguments)
        }
    }

    /// `packages=(…)` of scripts/install-deps.sh: what a developer's machine gets for building.
    static func buildPackages() throws -> [String] {
        let script = try ShippedFiles.text("scripts/install-deps.sh")
        let line = try #require(script.split(separator: "\n").first { $0.hasPrefix("packages=(") })
        return Dockerfile.words(String(line.dropFirst("packages=(".count).prefix { $0 != ")" }))
    }

    /// The `swift build` line of scripts/run.sh, in words.
    static func buildCommand() throws -> [String] {
        let script = try ShippedFiles.text("scripts/run.sh")
        let line = try #require(script.split(separator: "\n").first { $0.hasPrefix("swift build") })
        return Dockerfile.words(String(line))
    }

    /// The runtime library each build package's headers are for (Debian bookworm's names).
    static let runtimePackage = [
        "libcurl4-openssl-dev": "libcurl4", "libsqlite3-dev": "libsqlite3-0", "libssl-dev": "libssl3",
        "zlib1g-dev": "zlib1g", "libcrypt-dev": "libcrypt1",
    ]

    @Test func dockerfileBuildsAsTheScriptsDo() throws {
        let file = Dockerfile(try ShippedFiles.text("deploy/Dockerfile"))
        try #require(file.stages.count == 2, "a build stage and a runtime stage")
        let (build, runtime) = (file.stages[0], file.stages[1])

        // The build stage: an official Swift image of at least 6.1 (Package.swift's tools version) on bookworm.
        let from = Dockerfile.words(build[0].arguments)
        let image = try #require(from.first)
        let version = image.dropFirst("swift:".count).prefix { $0 != "-" }.split(separator: ".").compactMap { Int($0) }
        #expect(image.hasPrefix("swift:") && image.hasSuffix("-bookworm") && version.count >= 2, "\(image)")
        #expect(version.lexicographicallyPrecedes([6, 1]) == false, "\(image) is older than Swift 6.1")
        #expect(from.suffix(2) == ["AS", "build"], "\(from)")

        // Its packages are install-deps.sh's, and it builds with run.sh's command.
        let packages = try Self.buildPackages()
        #expect(Dockerfile.aptPackages(build) == packages, "apt-get install in the build stage differs from scripts/install-deps.sh")
        let command = try Self.buildCommand()
        let builds = Dockerfile.arguments(build, "RUN").flatMap { $0.components(separatedBy: "&&") }.map(Dockerfile.words)
            .filter { $0.starts(with: ["swift", "build"]) && !$0.contains("--show-bin-path") }
        try #require(builds.count == 1, "one swift build in the build stage: \(builds)")
        // The only addition: the runtime image has no Swift runtime libraries.
        #expect(builds[0] == command + ["--static-swift-stdlib"], "\(builds[0]) is not scripts/run.sh's \(command)")

        // The runtime stage: Debian slim with the libraries the build packages are headers for.
        #expect(runtime[0].arguments == "debian:bookworm-slim")
        let unmapped = packages.filter { Self.runtimePackage[$0] == nil }
        #expect(unmapped.isEmpty, "install-deps.sh gained \(unmapped): add their runtime libraries to the Dockerfile and to this map")
        #expect(Set(Dockerfile.aptPackages(runtime)) == Set(packages.compactMap { Self.runtimePackage[$0] } + ["ca-certificates"]))
        #expect(Dockerfile.arguments(runtime, "COPY").contains { $0.hasPrefix("--from=build ") })

        let user = try #require(Dockerfile.arguments(runtime, "USER").last)
        let uid = try #require(Int(user.prefix { $0 != ":" }), "USER is numeric, for runAsNonRoot")
        #expect(uid != 0)
        #expect(Dockerfile.arguments(runtime, "VOLUME") == ["/var/lib/registry-mirror"])
        #expect(Dockerfile.arguments(runtime, "EXPOSE") == ["5000"])
        #expect(Dockerfile.arguments(runtime, "ENV").contains("REGISTRY_MIRROR_DATA_DIR=/var/lib/registry-mirror"))
        #expect(Dockerfile.arguments(runtime, "HEALTHCHECK").first?.contains("/healthz") == true)
        #expect(Dockerfile.arguments(runtime, "ENTRYPOINT") == [#"["registry-mirror"]"#])

        // The build context leaves the local build folders out.
        let ignored = try ShippedFiles.text(".dockerignore").split(separator: "\n").map(String.init)
        #expect(ignored.contains(".build") && ignored.contains("data"))
    }

    // MARK: YAML under deploy/

    /// Every document of every YAML file under deploy/.
    static func yamlDocuments() throws -> [(file: String, document: Any)] {
        let root = ShippedFiles.root + "/deploy"
        let files = try FileManager.default.subpathsOfDirectory(atPath: root).filter { $0.hasSuffix(".yaml") || $0.hasSuffix(".yml") }.sorted()
        var out: [(String, Any)] = []
        for file in files {
            for document in try Yams.load_all(yaml: try ShippedFiles.text("deploy/" + file)) {
                out.append(("deploy/" + file, document))
            }
        }
        return out
    }

    @Test func everyYAMLFileUnderDeployParses() throws {
        let files = Set(try Self.yamlDocuments().map(\.file))
        #expect(files.isSuperset(of: ["deploy/compose.yaml", "deploy/kubernetes/statefulset.yaml", "deploy/kubernetes/service.yaml",
                                      "deploy/kubernetes/configmap.yaml", "deploy/kubernetes/kustomization.yaml"]), "\(files)")
        #expect(files.isSuperset(of: Self.fleetManifests.map { "deploy/kubernetes/fleet/" + $0 } + ["deploy/kubernetes/fleet/kustomization.yaml"]), "\(files)")
    }

    /// The Kubernetes objects of the manifests directly in `directory` (the single node's, or
    /// the fleet variant's), of `kind`.
    static func objects(_ kind: String, in directory: String = "deploy/kubernetes") throws -> [[String: Any]] {
        try yamlDocuments().filter { ($0.file as NSString).deletingLastPathComponent == directory }
            .compactMap { $0.document as? [String: Any] }.filter { $0["kind"] as? String == kind }
    }

    /// The Kubernetes object of `kind` in `directory` (exactly one).
    static func object(_ kind: String, in directory: String = "deploy/kubernetes") throws -> [String: Any] {
        let matches = try objects(kind, in: directory)
        try #require(matches.count == 1, "one \(kind) in \(directory)")
        return matches[0]
    }

    @Test func kubernetesManifestsProbeDrainAndConfine() throws {
        let set = try Self.object("StatefulSet")
        let pod = try #require(YAMLPath.dig(set, "spec", "template", "spec") as? [String: Any])
        let containers = try #require(pod["containers"] as? [[String: Any]])
        try #require(containers.count == 1)
        let container = containers[0]

        // Probes: ready from /readyz, alive from /healthz, both on the container's port.
        let portName = try #require(YAMLPath.dig(container, "ports", 0, "name") as? String)
        let port = try #require(YAMLPath.dig(container, "ports", 0, "containerPort") as? Int)
        #expect(YAMLPath.dig(container, "readinessProbe", "httpGet", "path") as? String == "/readyz")
        #expect(YAMLPath.dig(container, "livenessProbe", "httpGet", "path") as? String == "/healthz")
        for probe in ["readinessProbe", "livenessProbe"] {
            let target = YAMLPath.dig(container, probe, "httpGet", "port")
            #expect(target as? String == portName || target as? Int == port, "\(probe) targets \(String(describing: target))")
        }

        // Draining: as long as the systemd unit's TimeoutStopSec.
        let grace = try #require(pod["terminationGracePeriodSeconds"] as? Int)
        #expect(grace >= 60, "terminationGracePeriodSeconds \(grace)")
        if let pause = YAMLPath.dig(container, "lifecycle", "preStop", "exec", "command", 1) as? String, let seconds = Int(pause) {
            #expect(seconds < grace / 2, "the preStop pause leaves most of the grace period to draining")
        }

        for key in ["requests", "limits"] {
            let resources = try #require(YAMLPath.dig(container, "resources", key) as? [String: Any], "resources.\(key)")
            #expect(resources["cpu"] != nil && resources["memory"] != nil, "resources.\(key): \(resources)")
        }
        #expect(YAMLPath.dig(pod, "securityContext", "runAsNonRoot") as? Bool == true)
        #expect(YAMLPath.dig(container, "securityContext", "readOnlyRootFilesystem") as? Bool == true)
        #expect(YAMLPath.dig(container, "securityContext", "allowPrivilegeEscalation") as? Bool == false)
        #expect(YAMLPath.dig(container, "securityContext", "capabilities", "drop") as? [String] == ["ALL"])
        // The image's user, so the volume's fsGroup ownership matches what the process writes as.
        let dockerUser = Dockerfile(try ShippedFiles.text("deploy/Dockerfile")).stages.last.flatMap { Dockerfile.arguments($0, "USER").last }
        #expect(dockerUser?.hasPrefix("\(YAMLPath.dig(pod, "securityContext", "runAsUser") as? Int ?? -1):") == true)

        // The data volume comes from the claim template and is where the config keeps data.
        let claim = try #require(YAMLPath.dig(set, "spec", "volumeClaimTemplates", 0) as? [String: Any])
        let claimName = try #require(YAMLPath.dig(claim, "metadata", "name") as? String)
        let mounts = try #require(container["volumeMounts"] as? [[String: Any]])
        let dataMount = try #require(mounts.first { $0["name"] as? String == claimName }?["mountPath"] as? String)
        let configMount = try #require(mounts.first { $0["name"] as? String == "config" }?["mountPath"] as? String)
        let args = try #require(container["args"] as? [String])
        let configFlag = try #require(args.firstIndex(of: "--config"))
        let configPath = args[configFlag + 1]
        #expect(configPath.hasPrefix(configMount + "/"))

        // The ConfigMap's config is valid, and agrees with the volume, the port and the claim's size.
        let map = try Self.object("ConfigMap")
        let text = try #require(YAMLPath.dig(map, "data", String(configPath.dropFirst(configMount.count + 1))) as? String)
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let config = try MirrorConfiguration.load(file: try ShippedFiles.stage(text, named: "configmap.yaml", in: dir), environment: [:])
        #expect(config.dataDirectory == dataMount)
        #expect(MirrorConfiguration.parseListen(config.listen)?.port == port)
        let storage = try #require(YAMLPath.dig(claim, "spec", "resources", "requests", "storage") as? String)
        let capacity = try #require(ByteSize.parse(storage))
        let cap = try #require(config.maxSize, "a cache on a fixed-size volume needs storage.max_size")
        #expect(cap < capacity, "storage.max_size \(cap) does not fit the \(storage) volume")

        // The Service reaches that port, and kustomize lists every manifest.
        let service = try Self.object("Service")
        let servicePort = YAMLPath.dig(service, "spec", "ports", 0, "targetPort")
        #expect(servicePort as? String == portName || servicePort as? Int == port)
        #expect(YAMLPath.dig(service, "spec", "selector") as? [String: String] == YAMLPath.dig(set, "spec", "selector", "matchLabels") as? [String: String])
        let kustomization = try Self.object("Kustomization")
        let resources = try #require(kustomization["resources"] as? [String])
        let manifests = try FileManager.default.contentsOfDirectory(atPath: ShippedFiles.root + "/deploy/kubernetes")
            .filter { $0.hasSuffix(".yaml") && $0 != "kustomization.yaml" }
        #expect(Set(resources) == Set(manifests))
    }

    @Test func composeBuildsTheImageAndMountsAValidConfig() throws {
        let compose = try #require(try Yams.load(yaml: try ShippedFiles.text("deploy/compose.yaml")) as? [String: Any])
        let service = try #require(YAMLPath.dig(compose, "services", "registry-mirror") as? [String: Any])
        // Paths in a compose file are relative to its directory.
        let base = URL(fileURLWithPath: ShippedFiles.root + "/deploy")
        let context = base.appendingPathComponent(try #require(YAMLPath.dig(service, "build", "context") as? String)).standardized
        let dockerfile = try #require(YAMLPath.dig(service, "build", "dockerfile") as? String)
        #expect(FileManager.default.fileExists(atPath: context.appendingPathComponent(dockerfile).path))
        #expect(service["stop_grace_period"] as? String == "60s")
        #expect(service["read_only"] as? Bool == true)

        let args = try #require(service["command"] as? [String])
        let configPath = args[try #require(args.firstIndex(of: "--config")) + 1]
        let volumes = try #require(service["volumes"] as? [String])
        let mount = try #require(volumes.first { $0.split(separator: ":").dropFirst().first.map(String.init) == configPath })
        let source = base.appendingPathComponent(String(mount.split(separator: ":")[0])).standardized.path
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let config = try MirrorConfiguration.load(
            file: try ShippedFiles.stage(try String(contentsOfFile: source, encoding: .utf8), named: "compose.yaml", in: dir), environment: [:])
        #expect(volumes.contains { $0.hasSuffix(":" + config.dataDirectory) }, "the data directory \(config.dataDirectory) is a volume")
    }
}

// MARK: The fleet variant (issue 12)

extension DeployTests {
    static let fleetDirectory = "deploy/kubernetes/fleet"
    static let fleetManifests = ["namespace.yaml", "configmap.yaml", "secret.yaml", "service.yaml", "peers-service.yaml", "deployment.yaml"]

    /// A container's variables: literal values, and where the others come from.
    static func environment(of container: [String: Any]) -> [String: [String: Any]] {
        var out: [String: [String: Any]] = [:]
        for entry in container["env"] as? [[String: Any]] ?? [] {
            if let name = entry["name"] as? String { out[name] = entry }
        }
        return out
    }

    @Test("the fleet variant: stateless replicas (no claim), probes and draining as the single node, a headless peer Service, the Secret wired into the environment, a config that loads")
    func fleetManifestsAreStatelessReplicas() throws {
        let deployment = try Self.object("Deployment", in: Self.fleetDirectory)
        #expect(try Self.objects("StatefulSet", in: Self.fleetDirectory).isEmpty)
        #expect(YAMLPath.dig(deployment, "spec", "volumeClaimTemplates") == nil)
        #expect((YAMLPath.dig(deployment, "spec", "replicas") as? Int ?? 0) >= 2, "a fleet of one")
        let pod = try #require(YAMLPath.dig(deployment, "spec", "template", "spec") as? [String: Any])
        let podLabels = try #require(YAMLPath.dig(deployment, "spec", "template", "metadata", "labels") as? [String: String])
        #expect(YAMLPath.dig(deployment, "spec", "selector", "matchLabels") as? [String: String] == podLabels)
        let containers = try #require(pod["containers"] as? [[String: Any]])
        try #require(containers.count == 1)
        let container = containers[0]

        // No volume outlives the pod: the data directory (the spool) is an emptyDir.
        let volumes = try #require(pod["volumes"] as? [[String: Any]])
        #expect(!volumes.contains { $0["persistentVolumeClaim"] != nil }, "a fleet replica holds no claim")
        let mounts = try #require(container["volumeMounts"] as? [[String: Any]])
        let args = try #require(container["args"] as? [String])
        let configPath = args[try #require(args.firstIndex(of: "--config")) + 1]
        let configMount = try #require(mounts.first { $0["name"] as? String == "config" }?["mountPath"] as? String)
        #expect(configPath.hasPrefix(configMount + "/"))

        // Ports, probes and draining, as the single node's.
        let ports = try #require(container["ports"] as? [[String: Any]])
        let portNumbers = Dictionary(uniqueKeysWithValues: ports.compactMap { p in (p["name"] as? String).flatMap { n in (p["containerPort"] as? Int).map { (n, $0) } } })
        let httpPort = try #require(portNumbers["http"])
        let fleetPort = try #require(portNumbers["fleet"], "a port named fleet")
        #expect(fleetPort == 5001)
        #expect(YAMLPath.dig(container, "readinessProbe", "httpGet", "path") as? String == "/readyz")
        #expect(YAMLPath.dig(container, "livenessProbe", "httpGet", "path") as? String == "/healthz")
        for probe in ["readinessProbe", "livenessProbe"] {
            let target = YAMLPath.dig(container, probe, "httpGet", "port")
            #expect(target as? String == "http" || target as? Int == httpPort, "\(probe) targets \(String(describing: target)), not the client port")
        }
        let single = try #require(YAMLPath.dig(try Self.object("StatefulSet"), "spec", "template", "spec") as? [String: Any])
        let grace = try #require(pod["terminationGracePeriodSeconds"] as? Int)
        #expect(grace >= single["terminationGracePeriodSeconds"] as? Int ?? 60)
        let pause = try #require(YAMLPath.dig(container, "lifecycle", "preStop", "exec", "command", 1) as? String)
        #expect((Int(pause) ?? grace) < grace / 2)
        #expect(YAMLPath.dig(pod, "securityContext", "runAsNonRoot") as? Bool == true)
        #expect(YAMLPath.dig(container, "securityContext", "readOnlyRootFilesystem") as? Bool == true)
        #expect(YAMLPath.dig(container, "securityContext", "capabilities", "drop") as? [String] == ["ALL"])

        // Services: the clients' on http, a headless one for the peers on the fleet port.
        let services = try Self.objects("Service", in: Self.fleetDirectory)
        try #require(services.count == 2, "a client Service and a peer Service")
        let headless = try #require(services.first { YAMLPath.dig($0, "spec", "clusterIP") as? String == "None" }, "a headless Service")
        let client = try #require(services.first { YAMLPath.dig($0, "spec", "clusterIP") as? String != "None" })
        #expect(YAMLPath.dig(headless, "spec", "ports", 0, "name") as? String == "fleet")
        #expect(YAMLPath.dig(headless, "spec", "ports", 0, "port") as? Int == 5001)
        let peerTarget = YAMLPath.dig(headless, "spec", "ports", 0, "targetPort")
        #expect(peerTarget as? String == "fleet" || peerTarget as? Int == fleetPort)
        let clientTarget = YAMLPath.dig(client, "spec", "ports", 0, "targetPort")
        #expect(clientTarget as? String == "http" || clientTarget as? Int == httpPort)
        for service in services {
            let selector = try #require(YAMLPath.dig(service, "spec", "selector") as? [String: String])
            #expect(selector.allSatisfy { podLabels[$0.key] == $0.value }, "\(selector) selects no replica")
        }

        // The Secret: every key a variable takes from it exists; the fleet key, the S3 key and
        // the database password come from it, never a literal.
        let secret = try Self.object("Secret", in: Self.fleetDirectory)
        let secretName = try #require(YAMLPath.dig(secret, "metadata", "name") as? String)
        let secretKeys = Set((secret["stringData"] as? [String: Any] ?? secret["data"] as? [String: Any] ?? [:]).keys)
        let env = Self.environment(of: container)
        for (name, entry) in env {
            guard let ref = YAMLPath.dig(entry, "valueFrom", "secretKeyRef") as? [String: Any] else { continue }
            #expect(ref["name"] as? String == secretName, "\(name) reads another Secret")
            #expect(secretKeys.contains(ref["key"] as? String ?? ""), "\(name) reads a key the Secret lacks")
        }
        for name in ["REGISTRY_MIRROR_FLEET_SECRET", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "REGISTRY_MIRROR_POSTGRES_PASSWORD"] {
            #expect(YAMLPath.dig(env[name], "valueFrom", "secretKeyRef") != nil, "\(name) is not from the Secret")
        }
        // fleet.advertise: the pod's own address on the fleet port.
        #expect(YAMLPath.dig(env["POD_IP"], "valueFrom", "fieldRef", "fieldPath") as? String == "status.podIP")
        #expect(env["REGISTRY_MIRROR_FLEET_ADVERTISE"]?["value"] as? String == "http://$(POD_IP):\(fleetPort)")

        // The config loads with the pod's variables, and agrees with the manifests.
        let map = try Self.object("ConfigMap", in: Self.fleetDirectory)
        let text = try #require(YAMLPath.dig(map, "data", String(configPath.dropFirst(configMount.count + 1))) as? String)
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let podEnvironment = [
            "REGISTRY_MIRROR_FLEET_SECRET": String(repeating: "k", count: 64), "REGISTRY_MIRROR_FLEET_ADVERTISE": "http://10.1.2.3:\(fleetPort)",
            "AWS_ACCESS_KEY_ID": "id", "AWS_SECRET_ACCESS_KEY": "secret", "REGISTRY_MIRROR_POSTGRES_PASSWORD": "password",
        ]
        let config = try MirrorConfiguration.load(file: try ShippedFiles.stage(text, named: "fleet.yaml", in: dir), environment: podEnvironment)
        #expect(config.s3Storage != nil, "storage.backend: s3")
        #expect(config.index.backend == .postgres)
        let fleet = try #require(config.fleet, "a fleet: section")
        #expect(fleet.port == fleetPort)
        #expect(fleet.advertise == "http://10.1.2.3:\(fleetPort)")
        #expect(MirrorConfiguration.parseListen(config.listen)?.port == httpPort)
        let dataMount = try #require(mounts.first { ($0["mountPath"] as? String) == config.dataDirectory }, "data_dir is not a mount")
        let dataVolume = try #require(volumes.first { $0["name"] as? String == dataMount["name"] as? String })
        #expect(dataVolume["emptyDir"] != nil, "the spool is an emptyDir")
        // The variable fleet.secret_env names is the one the Secret fills.
        let parsed = try Yams.load(yaml: text) as? [String: Any]
        let secretVariable = YAMLPath.dig(parsed, "fleet", "secret_env") as? String ?? FleetSettings.defaultSecretVariable
        #expect(env[secretVariable] != nil, "\(secretVariable) is not set in the pod")

        let kustomization = try Self.object("Kustomization", in: Self.fleetDirectory)
        let manifests = try FileManager.default.contentsOfDirectory(atPath: ShippedFiles.root + "/" + Self.fleetDirectory)
            .filter { $0.hasSuffix(".yaml") && $0 != "kustomization.yaml" }
        #expect(Set(kustomization["resources"] as? [String] ?? []) == Set(manifests))
        #expect(Set(manifests) == Set(Self.fleetManifests))
    }

    /// `${NAME:-default}` as compose substitutes it when NAME is unset.
    static func composeDefaults(_ text: String) -> String {
        let pattern = try! NSRegularExpression(pattern: #"\$\{[A-Z_]+:-([^}]*)\}"#)
        return pattern.stringByReplacingMatches(in: text, range: NSRange(text.startIndex..., in: text), withTemplate: "$1")
    }

    @Test("compose's fleet profile: PostgreSQL 15, an S3 server and its bucket, three replicas with their own advertised addresses, one config that loads")
    func composeFleetProfile() throws {
        let compose = try #require(try Yams.load(yaml: try ShippedFiles.text("deploy/compose.yaml")) as? [String: Any])
        let services = try #require(compose["services"] as? [String: [String: Any]])
        let fleet = services.filter { ($0.value["profiles"] as? [String])?.contains("fleet") == true }
        #expect(services["registry-mirror"]?["profiles"] == nil, "the single node stays the default")
        let postgres = try #require(fleet.values.first { ($0["image"] as? String)?.hasPrefix("postgres:") == true })
        #expect(postgres["image"] as? String == "postgres:15")
        #expect(fleet.values.contains { ($0["image"] as? String)?.hasPrefix("minio/minio") == true }, "an S3-compatible server")
        let replicas = fleet.filter { ($0.value["command"] as? [String])?.first == "serve" }
        #expect(replicas.count >= 2 && replicas.count <= 3, "\(replicas.keys.sorted())")

        let content = try #require(YAMLPath.dig(compose, "configs", "fleet-config", "content") as? String)
        var advertised: Set<String> = []
        var ids: Set<String> = []
        var hostPorts: Set<String> = []
        for (name, replica) in replicas {
            #expect(replica["stop_grace_period"] as? String == "60s", "\(name)")
            #expect(replica["read_only"] as? Bool == true, "\(name)")
            let dependsOn = try #require(replica["depends_on"] as? [String: Any], "\(name)")
            #expect(dependsOn.keys.contains { services[$0]?["image"] as? String == "postgres:15" }, "\(name) starts before the database")
            let args = try #require(replica["command"] as? [String])
            let configPath = args[try #require(args.firstIndex(of: "--config")) + 1]
            #expect((replica["configs"] as? [[String: Any]])?.contains { $0["source"] as? String == "fleet-config" && $0["target"] as? String == configPath } == true,
                    "\(name) mounts fleet-config at \(configPath)")
            var environment: [String: String] = [:]
            for (key, value) in replica["environment"] as? [String: Any] ?? [:] { environment[key] = Self.composeDefaults("\(value)") }
            let dir = try TemporaryDirectory()
            defer { dir.remove() }
            let config = try MirrorConfiguration.load(file: try ShippedFiles.stage(content, named: "fleet.yaml", in: dir), environment: environment)
            let settings = try #require(config.fleet, "\(name)")
            #expect(config.s3Storage != nil && config.index.backend == .postgres)
            let url = try #require(URL(string: settings.advertise))
            #expect(url.host == name && url.port == settings.port, "\(name) advertises \(settings.advertise)")
            advertised.insert(settings.advertise)
            ids.insert(settings.replicaID)
            hostPorts.formUnion(replica["ports"] as? [String] ?? [])
            #expect(config.s3Storage.map { services[$0.endpoint.host ?? ""] != nil } == true, "the S3 endpoint is a service of the file")
        }
        #expect(advertised.count == replicas.count && ids.count == replicas.count, "replicas share an address or an id")
        #expect(hostPorts.count == replicas.count, "replicas share a host port")
    }
}

/// Walks parsed YAML by mapping keys and list indices.
enum YAMLPath {
    static func dig(_ node: Any?, _ path: Any...) -> Any? {
        var node = node
        for step in path {
            if let key = step as? String {
                node = (node as? [String: Any])?[key]
            } else if let index = step as? Int, let list = node as? [Any], list.indices.contains(index) {
                node = list[index]
            } else {
                return nil
            }
        }
        return node
    }
}
