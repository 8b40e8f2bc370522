// Android library of Tern. Sources:
//   src/main/kotlin                 the Android glue (dev.tern.android)
//   ../kotlin/src/main/kotlin       the dev.tern Kotlin layer (shared with the host suite)
//   <tern.nativeDir>/gen/kotlin     the uniffi-generated dev.tern.ffi bindings
//   <tern.nativeDir>/jni/<abi>      libtern_bindings.so per ABI
// The last two come from bindings/scripts/build-android.sh. Instrumented tests:
//   src/androidTest/kotlin + ../kotlin/src/testFixtures/kotlin (the shared scenarios).
plugins {
    id("com.android.library") version "8.5.2"
    id("org.jetbrains.kotlin.android") version "2.0.21"
}

val nativeDir = file(providers.gradleProperty("tern.nativeDir").getOrElse("../../target/android"))
val generatedKotlin = nativeDir.resolve("gen/kotlin")
val jniDir = nativeDir.resolve("jni")

android {
    namespace = "dev.tern.android"
    compileSdk = 34

    defaultConfig {
        minSdk = 24
        testInstrumentationRunner = "androidx.test.runner.AndroidJUnitRunner"
        consumerProguardFiles("consumer-rules.pro")
    }

    sourceSets {
        getByName("main") {
            java.srcDirs("src/main/kotlin", "../kotlin/src/main/kotlin", generatedKotlin)
            jniLibs.srcDirs(jniDir)
        }
        getByName("androidTest") {
            java.srcDirs("src/androidTest/kotlin", "../kotlin/src/testFixtures/kotlin")
        }
    }

    compileOptions {
        sourceCompatibility = JavaVersion.VERSION_17
        targetCompatibility = JavaVersion.VERSION_17
    }

    kotlinOptions {
        jvmTarget = "17"
    }
}

dependencies {
    // JNA as an AAR: it carries libjnidispatch.so for every Android ABI.
    implementation("net.java.dev.jna:jna:5.13.0@aar")
    api("org.jetbrains.kotlinx:kotlinx-coroutines-android:1.8.1")
    implementation("androidx.lifecycle:lifecycle-process:2.8.4")
    implementation("androidx.work:work-runtime-ktx:2.9.1")

    androidTestImplementation("androidx.test:runner:1.6.2")
    androidTestImplementation("androidx.test:core:1.6.1")
    androidTestImplementation("androidx.test.ext:junit:1.2.1")
    androidTestImplementation("androidx.work:work-testing:2.9.1")
    androidTestImplementation("junit:junit:4.13.2")
}

// The native inputs are not checked in: say how to make them instead of failing later
// with a missing class or an UnsatisfiedLinkError on the device.
tasks.named("preBuild") {
    doFirst {
        check(generatedKotlin.resolve("dev/tern/ffi").isDirectory && jniDir.isDirectory) {
            "Tern native inputs missing under $nativeDir: run bindings/scripts/build-android.sh first " +
                "(or set -Ptern.nativeDir=<its out dir>)"
        }
    }
}
