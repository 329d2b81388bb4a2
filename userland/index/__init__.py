"""The retrieval index behind `llmos index` and `llmos ask` (chunk.py: text -> chunks with line
numbers; store.py: the persistent index in $LLMOS_HOME/index). Vectors come from the kernel's
embed syscall: userland never loads a model."""
