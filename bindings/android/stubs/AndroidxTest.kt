@file:Suppress("unused", "UNUSED_PARAMETER")

package androidx.test.platform.app

import android.content.Context
import android.os.Bundle

abstract class Instrumentation {
    abstract val targetContext: Context
    fun runOnMainSync(runner: Runnable): Unit = throw UnsupportedOperationException("stub")
}

object InstrumentationRegistry {
    @JvmStatic fun getInstrumentation(): Instrumentation = throw UnsupportedOperationException("stub")
    @JvmStatic fun getArguments(): Bundle = throw UnsupportedOperationException("stub")
}
