"""The active-learning loop: a round's steps, its config, its model, and who answers its queries.

Owns: config (LoopConfig), round (the steps in order, resumable), model (a round's training samples,
training, evaluation, model folders), fallback (what a round selects when its model kept no box),
coldstart, history, forecast, oracle (simulated annotators), human (batches for labelling tools),
review (the auto-labels as a review batch, and `import` of either batch),
simulate (strategy benchmarks). May import: the root modules, store/, formats/, detectors/, metrics/,
predict/, train/, strategies/ (through the registry), semi/ (pseudo-labels, validation tables),
scale/ (pool scoring and simulate's runs on Ray) and report/ (simulate's plots and gallery).
"""
