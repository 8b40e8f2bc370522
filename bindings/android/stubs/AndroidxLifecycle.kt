@file:Suppress("unused", "UNUSED_PARAMETER")

package androidx.lifecycle

interface LifecycleObserver

interface LifecycleOwner {
    val lifecycle: Lifecycle
}

interface DefaultLifecycleObserver : LifecycleObserver {
    fun onCreate(owner: LifecycleOwner) {}
    fun onStart(owner: LifecycleOwner) {}
    fun onResume(owner: LifecycleOwner) {}
    fun onPause(owner: LifecycleOwner) {}
    fun onStop(owner: LifecycleOwner) {}
    fun onDestroy(owner: LifecycleOwner) {}
}

abstract class Lifecycle {
    abstract fun addObserver(observer: LifecycleObserver)
    abstract fun removeObserver(observer: LifecycleObserver)
    abstract val currentState: State

    enum class State {
        DESTROYED, INITIALIZED, CREATED, STARTED, RESUMED;

        fun isAtLeast(state: State): Boolean = compareTo(state) >= 0
    }
}

class ProcessLifecycleOwner private constructor() : LifecycleOwner {
    override val lifecycle: Lifecycle get() = throw UnsupportedOperationException("stub")

    companion object {
        @JvmStatic fun get(): LifecycleOwner = throw UnsupportedOperationException("stub")
    }
}
