"""The compiler driver: the pipeline (`pipeline.build`), atomic package writes and the on-disk
compile cache behind `mirasc.compile`."""
