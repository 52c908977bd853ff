"""Patient timelines as language: MEDS event data -> tokens -> the same GPT -> next events.

    python -m gpt.events generate --out=ehr_meds          # the synthetic MEDS dataset
    python train.py config/train_synthetic_ehr.py          # or --dataset=meds:<folder>
    python -m gpt.events eval --out_dir=out-ehr            # perplexity, next-event accuracy, KL
    python -m gpt.events sample --out_dir=out-ehr --code=ICD10CM//I10 --days=365
    python -m gpt.events labels --meds_dir=data/synthetic_ehr-meds --task=uti_recurrence
    python -m gpt.events predict --out_dir=out-ehr --task=uti_recurrence --labels=<labels.parquet>
    python -m gpt.events score --predictions=<predictions.parquet>

Modules: `meds_data` (read, validate and write MEDS folders), `synthetic` (a documented
stochastic process with known next-event distributions), `tokenizer` (codes, time gaps and
values as tokens), `data` (prepared token files and one-patient-per-row batches for
train.py), `evaluate` (metrics against the frequency baseline and the true process, sampled
futures), `labels` (task files, label extraction, MEDS label and prediction files), `futures`
(sampled futures sharing one prefill per history, task predictions, the true probability),
`calibration` (AUROC, AUPRC, Brier, calibration, bootstrap intervals, scores against the
truth). Nothing here is imported by the text pipeline; pyarrow and meds only load when a
MEDS folder is read or written.
"""
