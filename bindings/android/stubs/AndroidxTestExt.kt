@file:Suppress("unused", "UNUSED_PARAMETER")

package androidx.test.ext.junit.runners

class AndroidJUnit4(klass: Class<*>) : org.junit.runners.BlockJUnit4ClassRunner(klass)
