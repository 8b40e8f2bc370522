# Sourced, not run: the Kotlin tools the host-JVM scripts share (test-kotlin.sh,
# build-fleet-kotlin.sh). Installs what is missing, fails loudly if it cannot, never
# skips:
#   - kotlinc 2.4.20 from npm (`kotlin-compiler`) into the tool cache
#     ($TERN_TOOLS_DIR, default ~/.cache/tern-tools/kotlin); it also provides
#     kotlin-stdlib and kotlinx-coroutines-core-jvm
#   - JNA and JUnit from Debian apt (libjna-java junit4 junit5)
#
#   . "$root/bindings/scripts/kotlin-tools.sh"
#   kotlin_tools "my-script.sh"    # sets kotlin_home, kotlinc, coroutines, kotlin_stdlib, jna_jar
#
# Needs `java` (a JDK, 17+) on PATH.

# kotlin_tools NAME: installs the tools when missing; NAME prefixes error messages.
kotlin_tools() {
  local who=$1
  local tools="${TERN_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/tern-tools}"
  _kt_die() { echo "$who: $*" >&2; exit 1; }
  command -v java >/dev/null || _kt_die "java not found: install a JDK (17+)"
  kotlin_home="$tools/kotlin/package"
  if [ ! -x "$kotlin_home/bin/kotlinc" ]; then
    command -v npm >/dev/null || _kt_die "npm not found: needed to fetch kotlin-compiler@2.4.20"
    echo "installing kotlinc 2.4.20 (npm kotlin-compiler) into the tool cache ($tools/kotlin)" >&2
    mkdir -p "$tools/kotlin"
    (cd "$tools/kotlin" && npm pack --silent kotlin-compiler@2.4.20 >/dev/null && tar xzf kotlin-compiler-2.4.20.tgz) \
      || _kt_die "could not install kotlin-compiler@2.4.20 from npm"
  fi
  kotlinc="$kotlin_home/bin/kotlinc"
  [ -x "$kotlinc" ] || _kt_die "kotlinc missing at $kotlinc"
  jna_jar=/usr/share/java/jna.jar
  local jars=("$jna_jar" /usr/share/java/junit-platform-console-standalone.jar) missing=0 j sudo
  for j in "${jars[@]}"; do [ -f "$j" ] || missing=1; done
  if [ "$missing" = 1 ]; then
    echo "installing JNA and JUnit from apt (libjna-java junit4 junit5)" >&2
    if [ "$(id -u)" = 0 ]; then sudo=""; else sudo="sudo"; fi
    $sudo apt-get update -qq >&2 && $sudo apt-get install -y -qq --no-install-recommends libjna-java junit4 junit5 >&2 \
      || _kt_die "could not install libjna-java junit4 junit5 with apt-get"
    for j in "${jars[@]}"; do [ -f "$j" ] || _kt_die "$j still missing after apt-get install"; done
  fi
  coroutines="$kotlin_home/lib/kotlinx-coroutines-core-jvm.jar"
  [ -f "$coroutines" ] || _kt_die "$coroutines missing (kotlin-compiler npm package changed?)"
  kotlin_stdlib="$kotlin_home/lib/kotlin-stdlib.jar"
  [ -f "$kotlin_stdlib" ] || _kt_die "$kotlin_stdlib missing (kotlin-compiler npm package changed?)"
}
