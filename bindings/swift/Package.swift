// swift-tools-version:5.9
// The Tern Swift package: the generated bindings (TernFFI, copied into
// Sources/TernFFI by bindings/scripts/build-ios.sh) over the XCFramework of the Rust
// core, and the idiomatic `Tern` layer with its Apple glue.
//
// Platforms: the XCFramework has slices for iOS (device, simulator), macOS and Mac
// Catalyst, and nothing else — tvOS, watchOS and visionOS are not supported (building
// for them fails at the binary target: no library for the platform).
import PackageDescription

let package = Package(
    name: "Tern",
    platforms: [.iOS(.v15), .macOS(.v12), .macCatalyst(.v15)],
    products: [
        .library(name: "Tern", targets: ["Tern"]),
    ],
    targets: [
        // Built by bindings/scripts/build-ios.sh. For a release, replace `path:` with
        // `url:` + `checksum:` of the published zip (the script prints both).
        .binaryTarget(name: "TernFFIFFI", path: "TernFFIFFI.xcframework"),
        .target(name: "TernFFI", dependencies: ["TernFFIFFI"], path: "Sources/TernFFI", exclude: ["README.md"]),
        .target(name: "Tern", dependencies: ["TernFFI"], path: "Sources/Tern"),
        .testTarget(name: "TernTests", dependencies: ["Tern", "TernFFI"], path: "Tests/TernTests"),
    ]
)
