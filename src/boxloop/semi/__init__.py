"""Learning from unlabelled images: pseudo-label acceptance, the certainty-aware student, auto-labelling.

Owns: pseudo (TSODA and class-wise thresholds), certainty (CertaintySSOD teacher-student against
"teacher continued"), autolabel and autolabel_config (iterative self-training), weak_view (the
teacher's flipped view). May import: the root modules, store/, detectors/, metrics/, predict/,
train/, and loop.config / loop.model (a project's detector settings and training samples).
"""
