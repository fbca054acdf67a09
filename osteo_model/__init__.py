"""Models and training: TP-SwAV pretraining, MoE multi-task fine-tuning (issue: models and training).

One concept per module:

* :mod:`~osteo_model.config`: frozen ``ModelConfig`` / ``TrainConfig`` parsed from params.yaml.
* :mod:`~osteo_model.norm`: ``ChannelNorm``, per-channel pool standardisation fitted on the training split.
* :mod:`~osteo_model.data`: ``TexturePoolDataset`` reading ``texture/<sha[:2]>/<sha>.npy`` pools and labels.
* :mod:`~osteo_model.backbones`: 3-D ResNet34 and a compact CNN behind a shared per-channel stem.
* :mod:`~osteo_model.sinkhorn`: ``sinkhorn(scores, n_iters, epsilon)``, SwAV codes (distributed-aware).
* :mod:`~osteo_model.views`: TP-SwAV texture-pool views and SwAV baseline crop views.
* :mod:`~osteo_model.swav`: projection head, prototypes, Eq. 1 loss, prototype-uniformity regulariser.
* :mod:`~osteo_model.moe`: device-gated mixture of experts and the unified loss (Eqs. 2-4).
* :mod:`~osteo_model.companion`: pseudo-BMD self-training and adaptive triplet loss (paper 002),
  screening/severity/T-score heads and ``select_threshold`` (paper 003).
* :mod:`~osteo_model.baselines`: L1 trabecular-HU rule and radiomics + logistic regression.
* :mod:`~osteo_model.checkpoint`, :mod:`~osteo_model.train`: the one resumable, DDP-ready training loop.
* :mod:`~osteo_model.pipeline`: entry points ``run_pretrain``, ``run_finetune``, ``load_model``, ``predict_frame``.
* :mod:`~osteo_model.evaluate_stage`: ``osteo evaluate``: the candidate's test predictions with its stored
  threshold, the champion re-scored on the same vertebrae, evaluate.json + report + MLflow child run.

Dependencies: torch, numpy, pandas, scikit-learn and :mod:`osteo_config.params`; never
``features/`` or ``flows/``. Importing the package has no side effects.
"""
