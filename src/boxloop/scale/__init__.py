"""Scale-out on Ray (the optional `ray` extra): the session, pool scoring, simulate's runs as tasks.

Owns: ray_session (start or join Ray), ray_scoring (pool scoring on Ray Data actors, one writer),
ray_simulate (every strategy x seed as a Ray task). Multi-process training (torchrun) is
train/ddp.py, beside the fit() it runs. May import: the root modules, store/, predict/, train/.
ray_simulate schedules the jobs loop.simulate hands it, without importing it.
"""
