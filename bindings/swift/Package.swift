// swift-tools-version:5.9
// The Tern Swift package: the generated bindings (TernFFI, copied into
// Sources/TernFFI by bindings/scripts/build-ios.sh) over the XCFramework of the Rust
// core, and the idiomatic `Tern` layer.
import PackageDescription

let package = Package(
    name: "Tern",
    platforms: [.iOS(.v15), .macOS(.v12)],
    products: [
        .library(name: "Tern", targets: ["Tern"]),
    ],
    targets: [
        // Built by bindings/scripts/build-ios.sh (device + simulator slices). For a
        // release, replace `path:` with `url:` + `checksum:` of the published zip.
        .binaryTarget(name: "TernFFIFFI", path: "TernFFIFFI.xcframework"),
        .target(name: "TernFFI", dependencies: ["TernFFIFFI"], path: "Sources/TernFFI"),
        .target(name: "Tern", dependencies: ["TernFFI"], path: "Sources/Tern"),
        .testTarget(name: "TernTests", dependencies: ["Tern"], path: "Tests/TernTests"),
    ]
)
