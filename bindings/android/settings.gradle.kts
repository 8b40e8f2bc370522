// The Tern Android library (module `tern-android`): the dev.tern Kotlin layer, the
// uniffi-generated bindings and the native libraries, plus the Android glue in
// src/main/kotlin/dev/tern/android. Build the native inputs first with
// bindings/scripts/build-android.sh, then: `gradle -p bindings/android assembleRelease`.
pluginManagement {
    repositories {
        google()
        mavenCentral()
        gradlePluginPortal()
    }
}

dependencyResolutionManagement {
    repositoriesMode.set(RepositoriesMode.FAIL_ON_PROJECT_REPOS)
    repositories {
        google()
        mavenCentral()
    }
}

rootProject.name = "tern-android"
