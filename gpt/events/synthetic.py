"""A synthetic electronic health record with known ground truth, written as a MEDS dataset.

One file although over 500 lines: the process's rates, the sampler and the exact next-event
probabilities (the ground truth models are scored against) must change together.

Every patient's timeline is drawn from one documented stochastic process, so for any prefix of
a generated timeline the true distribution of the next event is known exactly
(`SyntheticEHR.next_code_probs`) and models can be scored against it, not only against data.

The process (version 1)
-----------------------
A patient starts with three observed facts, written as MEDS rows:

    GENDER//F or GENDER//M   static (null time), probability 1/2 each
    MEDS_BIRTH               at the birth date; age at intake is uniform in [30, 85) years
    LAB//39156-5 (BMI)       the intake measurement, at an intake date uniform in [t0, t1]

From the intake on, events follow a continuous-time Markov jump process (competing risks):
in state s every code k of the vocabulary below has a rate lambda_k(s) per year; the time to
the next event is Exponential(sum_k lambda_k(s)) and the next code is k with probability
lambda_k(s) / sum_j lambda_j(s), independently of that time. The state changes only at events,
so between events nothing changes, and the record ends at death (MEDS_DEATH) or at the
administrative end date t1 + 2 years (censoring). The state s is a vector of 0/1 features that
the record itself shows:

    female, age   (decade of age at intake minus 5, so 50-59 years is 0)
    has:DX        chronic diagnosis DX was recorded (a chronic diagnosis occurs at most once)
    pending:ATC   a drug is indicated but not yet dispensed (set by its indications)
    on:ATC        a chronic drug was dispensed at least once (refills follow)
    high:LAB      the last value of LAB was at or above its threshold

Rates (per year):

    diagnoses and death   exp(log(base_k) + sum_f W[k, f] * s_f), times 0 for a chronic
                          diagnosis already present. W holds the sex and age effects, the
                          diagnoses that raise the hazard of later ones (obesity -> diabetes,
                          hypertension -> heart failure, ...) and the abnormal labs that lead
                          to a diagnosis (HbA1c >= 6.5 % -> type 2 diabetes, ...).
    drugs                 26 * pending (a start about two weeks after the indication; 100,
                          about 4 days, for an acute course) + 3 * on (refills of a chronic drug)
    labs                  routine rate + monitoring rates of the diagnoses and drugs present

Updates at an event: a chronic diagnosis sets has:DX and pending for each indicated drug not
yet taken; an acute diagnosis (infection, back pain, MI, ...) sets pending for its drugs; a
drug clears its pending flag and, if chronic, sets on:ATC; a lab sets high:LAB from its value.

Lab values are an AR(1) process per lab around a state-dependent mean:
value = mean_l(s) + r, r = rho_l * r_last + sqrt(1 - rho_l^2) * sd_l * eps (r drawn from
N(0, sd_l) at the first measurement), on a log scale for the skewed labs (TSH, NT-proBNP,
CRP), rounded to the lab's precision and stored as float32. The code distribution depends on
values only through the high:LAB flags.

All the numbers are in the tables below (DIAGNOSES, RAISES, DRUGS, LABS, ...); the codes are
real ICD-10-CM, ATC and LOINC codes, the effects are plausible in direction, not calibrated to
any population.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

VERSION = 1
DAY_US = 86_400 * 1_000_000
YEAR_DAYS = 365.25

# (code, description, rate per year for a man aged 50-59 with nothing recorded, female hazard
#  ratio, log hazard ratio per decade of age, "chronic" | "acute")
DIAGNOSES = [
    ("ICD10CM//F17.210", "Nicotine dependence, cigarettes", 0.012, 0.8, -0.25, "chronic"),
    ("ICD10CM//E66.9", "Obesity, unspecified", 0.010, 1.1, 0.0, "chronic"),
    ("ICD10CM//I10", "Essential (primary) hypertension", 0.035, 0.9, 0.35, "chronic"),
    ("ICD10CM//E78.5", "Hyperlipidemia, unspecified", 0.030, 0.9, 0.25, "chronic"),
    ("ICD10CM//E11.9", "Type 2 diabetes mellitus without complications", 0.008, 0.8, 0.3, "chronic"),
    ("ICD10CM//I25.10", "Atherosclerotic heart disease of native coronary artery", 0.006, 0.5, 0.5, "chronic"),
    ("ICD10CM//I48.91", "Unspecified atrial fibrillation", 0.004, 0.7, 0.7, "chronic"),
    ("ICD10CM//I50.9", "Heart failure, unspecified", 0.002, 0.8, 0.7, "chronic"),
    ("ICD10CM//N18.3", "Chronic kidney disease, stage 3", 0.002, 1.0, 0.6, "chronic"),
    ("ICD10CM//J44.9", "Chronic obstructive pulmonary disease, unspecified", 0.002, 0.9, 0.4, "chronic"),
    ("ICD10CM//F32.9", "Major depressive disorder, single episode", 0.012, 1.8, -0.1, "chronic"),
    ("ICD10CM//I63.9", "Cerebral infarction, unspecified", 0.002, 0.8, 0.7, "chronic"),
    ("ICD10CM//E03.9", "Hypothyroidism, unspecified", 0.004, 3.0, 0.2, "chronic"),
    ("ICD10CM//K21.9", "Gastro-esophageal reflux disease without esophagitis", 0.015, 1.1, 0.1, "chronic"),
    ("ICD10CM//M19.90", "Unspecified osteoarthritis, unspecified site", 0.012, 1.4, 0.5, "chronic"),
    ("ICD10CM//G47.33", "Obstructive sleep apnea", 0.004, 0.5, 0.1, "chronic"),
    ("ICD10CM//J06.9", "Acute upper respiratory infection, unspecified", 0.35, 1.2, -0.2, "acute"),
    ("ICD10CM//N39.0", "Urinary tract infection, site not specified", 0.05, 4.0, 0.2, "acute"),
    ("ICD10CM//J18.9", "Pneumonia, unspecified organism", 0.012, 0.9, 0.5, "acute"),
    ("ICD10CM//J44.1", "COPD with (acute) exacerbation", 1e-4, 1.0, 0.0, "acute"),
    ("ICD10CM//I21.9", "Acute myocardial infarction, unspecified", 5e-4, 0.6, 0.3, "acute"),
    ("ICD10CM//M54.50", "Low back pain, unspecified", 0.12, 1.1, 0.0, "acute"),
    ("ICD10CM//R07.9", "Chest pain, unspecified", 0.04, 1.0, 0.1, "acute"),
    ("ICD10CM//A09", "Infectious gastroenteritis and colitis, unspecified", 0.06, 1.1, -0.2, "acute"),
    ("ICD10CM//J11.1", "Influenza with other respiratory manifestations", 0.04, 1.0, 0.1, "acute"),
]
DEATH = "MEDS_DEATH"
# rate per year of death for a man aged 50-59 with nothing recorded; log-HR per decade
DEATH_BASE, DEATH_AGE, DEATH_FEMALE = 0.003, 0.9, 0.7

# log hazard ratios: a diagnosis (or an abnormal lab, "high:LAB") raises the rate of a later
# diagnosis or of death while it is present
RAISES = {
    "ICD10CM//E66.9": {"ICD10CM//E11.9": 1.2, "ICD10CM//I10": 0.8, "ICD10CM//E78.5": 0.5,
                       "ICD10CM//G47.33": 1.6, "ICD10CM//M19.90": 0.7, "ICD10CM//K21.9": 0.5},
    "ICD10CM//F17.210": {"ICD10CM//J44.9": 2.0, "ICD10CM//I25.10": 0.9, "ICD10CM//I63.9": 0.6,
                         "ICD10CM//J18.9": 0.5, DEATH: 0.5},
    "ICD10CM//I10": {"ICD10CM//I25.10": 0.8, "ICD10CM//I50.9": 1.0, "ICD10CM//N18.3": 0.9,
                     "ICD10CM//I63.9": 0.9, "ICD10CM//I48.91": 0.6},
    "ICD10CM//E78.5": {"ICD10CM//I25.10": 0.9, "ICD10CM//I63.9": 0.5},
    "ICD10CM//E11.9": {"ICD10CM//I25.10": 0.8, "ICD10CM//N18.3": 1.3, "ICD10CM//I63.9": 0.6,
                       "ICD10CM//N39.0": 0.5, DEATH: 0.3},
    "ICD10CM//I25.10": {"ICD10CM//I50.9": 1.2, "ICD10CM//R07.9": 1.5, "ICD10CM//I21.9": 3.5,
                        DEATH: 0.4},
    "ICD10CM//I48.91": {"ICD10CM//I63.9": 1.3, "ICD10CM//I50.9": 0.7},
    "ICD10CM//I50.9": {"ICD10CM//N18.3": 0.5, "ICD10CM//J18.9": 0.8, DEATH: 1.2},
    "ICD10CM//N18.3": {DEATH: 0.6},
    "ICD10CM//J44.9": {"ICD10CM//J18.9": 1.5, "ICD10CM//J44.1": 7.5, DEATH: 0.8},
    "ICD10CM//I63.9": {"ICD10CM//F32.9": 0.7, DEATH: 0.9},
    "ICD10CM//G47.33": {"ICD10CM//I10": 0.5, "ICD10CM//I48.91": 0.6},
    "high:LAB//39156-5": {"ICD10CM//E66.9": 3.2},
    "high:LAB//8480-6": {"ICD10CM//I10": 2.7},
    "high:LAB//4548-4": {"ICD10CM//E11.9": 3.4},
    "high:LAB//2093-3": {"ICD10CM//E78.5": 2.7},
    "high:LAB//2160-0": {"ICD10CM//N18.3": 3.0},
    "high:LAB//3016-3": {"ICD10CM//E03.9": 3.0},
    "high:LAB//33762-6": {"ICD10CM//I50.9": 2.5},
}

# (ATC code, description, diagnoses that indicate it, "chronic" (start, then refills) | "acute"
#  (one course per indication))
DRUGS = [
    ("ATC//A10BA02", "metformin", ("ICD10CM//E11.9",), "chronic"),
    ("ATC//C09AA05", "ramipril", ("ICD10CM//I10", "ICD10CM//N18.3", "ICD10CM//I50.9"), "chronic"),
    ("ATC//C08CA01", "amlodipine", ("ICD10CM//I10",), "chronic"),
    ("ATC//C10AA05", "atorvastatin", ("ICD10CM//E78.5", "ICD10CM//I25.10", "ICD10CM//I63.9",
                                      "ICD10CM//E11.9", "ICD10CM//I21.9"), "chronic"),
    ("ATC//B01AC06", "acetylsalicylic acid", ("ICD10CM//I25.10", "ICD10CM//I63.9",
                                              "ICD10CM//I21.9"), "chronic"),
    ("ATC//C07AB07", "bisoprolol", ("ICD10CM//I25.10", "ICD10CM//I50.9", "ICD10CM//I48.91",
                                    "ICD10CM//I21.9"), "chronic"),
    ("ATC//C03CA01", "furosemide", ("ICD10CM//I50.9",), "chronic"),
    ("ATC//B01AF01", "rivaroxaban", ("ICD10CM//I48.91",), "chronic"),
    ("ATC//R03AK06", "salmeterol and fluticasone", ("ICD10CM//J44.9",), "chronic"),
    ("ATC//N06AB06", "sertraline", ("ICD10CM//F32.9",), "chronic"),
    ("ATC//H03AA01", "levothyroxine sodium", ("ICD10CM//E03.9",), "chronic"),
    ("ATC//A02BC01", "omeprazole", ("ICD10CM//K21.9",), "chronic"),
    ("ATC//N07BA01", "nicotine", ("ICD10CM//F17.210",), "chronic"),
    ("ATC//J01CA04", "amoxicillin", ("ICD10CM//J18.9",), "acute"),
    ("ATC//J01MA02", "ciprofloxacin", ("ICD10CM//N39.0",), "acute"),
    ("ATC//H02AB06", "prednisolone", ("ICD10CM//J44.1",), "acute"),
    ("ATC//M01AE01", "ibuprofen", ("ICD10CM//M54.50", "ICD10CM//M19.90"), "acute"),
    ("ATC//N02BE01", "paracetamol", ("ICD10CM//J11.1", "ICD10CM//M19.90"), "acute"),
]
START_RATE = {"chronic": 26.0, "acute": 100.0}  # per year while pending
REFILL_RATE = 3.0  # per year while on a chronic drug


@dataclass(frozen=True)
class Lab:
    code: str
    description: str
    unit: str
    rate: float  # routine measurements per year
    mean: float  # for a patient with nothing recorded (log scale if `log`)
    sd: float  # stationary standard deviation around the mean (log scale if `log`)
    rho: float  # correlation with the previous residual
    decimals: int  # values are rounded to this many decimals
    threshold: float  # high:LAB is value >= threshold
    log: bool = False
    low: float = 0.0  # values are clipped below at this


LABS = [
    Lab("LAB//39156-5", "Body mass index", "kg/m2", 0.7, 26.5, 4.5, 0.9, 1, 30.0),
    Lab("LAB//8480-6", "Systolic blood pressure", "mm[Hg]", 1.0, 124.0, 14.0, 0.5, 0, 140.0),
    Lab("LAB//4548-4", "Hemoglobin A1c", "%", 0.3, 5.5, 0.45, 0.7, 1, 6.5),
    Lab("LAB//2093-3", "Cholesterol, total", "mg/dL", 0.35, 200.0, 32.0, 0.6, 0, 240.0),
    Lab("LAB//2160-0", "Creatinine", "mg/dL", 0.5, 0.9, 0.18, 0.7, 2, 1.5, low=0.3),
    Lab("LAB//718-7", "Hemoglobin", "g/dL", 0.5, 15.0, 1.1, 0.6, 1, 99.0),
    Lab("LAB//2823-3", "Potassium", "mmol/L", 0.35, 4.3, 0.35, 0.3, 1, 99.0),
    Lab("LAB//3016-3", "Thyrotropin", "m[IU]/L", 0.2, math.log(1.8), 0.45, 0.6, 2, 5.0, log=True),
    Lab("LAB//33762-6", "NT-proBNP", "pg/mL", 0.02, math.log(70.0), 0.7, 0.5, 0, 400.0, log=True),
    Lab("LAB//1988-5", "C reactive protein", "mg/L", 0.1, math.log(2.0), 0.8, 0.3, 1, 99999.0,
        log=True),
]
# extra measurements per year of a lab while a feature is present (monitoring)
MONITORING = {
    "has:ICD10CM//E11.9": {"LAB//4548-4": 2.5, "LAB//2160-0": 1.0, "LAB//2093-3": 0.8},
    "has:ICD10CM//I10": {"LAB//8480-6": 2.5, "LAB//2160-0": 0.8, "LAB//2823-3": 0.8},
    "has:ICD10CM//E78.5": {"LAB//2093-3": 1.2},
    "has:ICD10CM//N18.3": {"LAB//2160-0": 3.0, "LAB//2823-3": 2.0, "LAB//718-7": 1.5},
    "has:ICD10CM//I50.9": {"LAB//33762-6": 2.0, "LAB//2823-3": 1.5, "LAB//2160-0": 1.5},
    "has:ICD10CM//E03.9": {"LAB//3016-3": 1.5},
    "has:ICD10CM//E66.9": {"LAB//39156-5": 1.5},
    "on:ATC//C03CA01": {"LAB//2823-3": 1.5},
    "on:ATC//C09AA05": {"LAB//2823-3": 0.7, "LAB//2160-0": 0.7},
    "pending:ATC//J01CA04": {"LAB//1988-5": 30.0, "LAB//718-7": 10.0},
    "pending:ATC//J01MA02": {"LAB//1988-5": 20.0, "LAB//2160-0": 10.0},
}
# shifts of a lab's mean while a feature is present (log scale for log labs)
SHIFTS = {
    "female": {"LAB//718-7": -1.7, "LAB//2160-0": -0.15},
    "has:ICD10CM//E66.9": {"LAB//39156-5": 6.5, "LAB//4548-4": 0.2, "LAB//8480-6": 4.0},
    "has:ICD10CM//I10": {"LAB//8480-6": 18.0},
    "on:ATC//C09AA05": {"LAB//8480-6": -9.0, "LAB//2823-3": 0.2},
    "on:ATC//C08CA01": {"LAB//8480-6": -8.0},
    "has:ICD10CM//E11.9": {"LAB//4548-4": 2.2, "LAB//2160-0": 0.1},
    "on:ATC//A10BA02": {"LAB//4548-4": -0.8},
    "has:ICD10CM//E78.5": {"LAB//2093-3": 45.0},
    "on:ATC//C10AA05": {"LAB//2093-3": -60.0},
    "has:ICD10CM//N18.3": {"LAB//2160-0": 0.8, "LAB//2823-3": 0.4, "LAB//718-7": -1.2},
    "has:ICD10CM//I50.9": {"LAB//33762-6": 2.8, "LAB//2160-0": 0.3, "LAB//718-7": -0.6},
    "has:ICD10CM//I48.91": {"LAB//33762-6": 1.2},
    "on:ATC//C03CA01": {"LAB//2823-3": -0.3},
    "has:ICD10CM//E03.9": {"LAB//3016-3": 1.4},
    "on:ATC//H03AA01": {"LAB//3016-3": -1.3},
    "pending:ATC//J01CA04": {"LAB//1988-5": 3.0},
    "pending:ATC//J01MA02": {"LAB//1988-5": 2.3},
}
INTAKE_LAB = "LAB//39156-5"
STATIC_CODES = ("GENDER//F", "GENDER//M")
BIRTH = "MEDS_BIRTH"
AGE_RANGE = (30.0, 85.0)  # years at intake
INTAKE_YEARS = (2014, 2018)  # intake dates are uniform from Jan 1 of the first to Jan 1 of the last
FOLLOW_UP_END = 2020  # records are censored on Jan 1 of this year


def _epoch_day(year):
    return (np.datetime64(f"{year}-01-01", "D") - np.datetime64("1970-01-01", "D")).astype(int)


@dataclass
class State:
    """The process state of N patients: 0/1 (and age) features, last lab residuals, alive."""

    feats: np.ndarray  # (N, F) float64
    resid: np.ndarray  # (N, n_labs) last residual, NaN before the first measurement
    alive: np.ndarray  # (N,) bool

    def take(self, rows):
        return State(self.feats[rows].copy(), self.resid[rows].copy(), self.alive[rows].copy())


class SyntheticEHR:
    """The process of the module docstring as matrices: `rates`, `apply`, `simulate`, truths."""

    def __init__(self):
        dx = [d[0] for d in DIAGNOSES]
        drugs = [d[0] for d in DRUGS]
        labs = [lab.code for lab in LABS]
        self.codes = dx + [DEATH] + drugs + labs  # the vocabulary of process events, K codes
        self.index = {c: i for i, c in enumerate(self.codes)}
        self.descriptions = {d[0]: d[1] for d in DIAGNOSES} | {d[0]: d[1] for d in DRUGS}
        self.descriptions |= {lab.code: f"{lab.description} [{lab.unit}]" for lab in LABS}
        self.descriptions |= {DEATH: "Death", BIRTH: "Birth", "GENDER//F": "Female",
                              "GENDER//M": "Male"}
        chronic = [d[0] for d in DIAGNOSES if d[5] == "chronic"]
        self.features = (["female", "age"] + [f"has:{c}" for c in chronic]
                         + [f"pending:{d}" for d in drugs] + [f"on:{d}" for d in drugs]
                         + [f"high:{lab}" for lab in labs])
        self.f = {name: i for i, name in enumerate(self.features)}
        K, F, L = len(self.codes), len(self.features), len(LABS)
        # the codes are in blocks: diagnoses and death, drugs, labs
        self.dx_idx = slice(0, len(dx) + 1)
        self.drug_idx = slice(len(dx) + 1, len(dx) + 1 + len(drugs))
        self.lab_idx = slice(len(dx) + 1 + len(drugs), K)
        self.death = self.index[DEATH]
        self.lab_of = np.full(K, -1)  # code index -> lab number
        self.lab_of[self.lab_idx] = np.arange(L)

        # diagnoses and death: log rate = log_base + W @ feats, zero once a chronic one is present
        n_dx = len(dx) + 1
        self.log_base = np.log([d[2] for d in DIAGNOSES] + [DEATH_BASE])
        self.W = np.zeros((n_dx, F))
        self.W[:, self.f["female"]] = np.log([d[3] for d in DIAGNOSES] + [DEATH_FEMALE])
        self.W[:, self.f["age"]] = [d[4] for d in DIAGNOSES] + [DEATH_AGE]
        row = {c: i for i, c in enumerate(dx + [DEATH])}
        for source, targets in RAISES.items():
            col = self.f[source if source.startswith("high:") else f"has:{source}"]
            for target, log_hr in targets.items():
                self.W[row[target], col] += log_hr
        self.once = np.zeros((len(dx) + 1, F))  # which feature switches each diagnosis off
        for c in chronic:
            self.once[row[c], self.f[f"has:{c}"]] = 1.0

        # drugs: START_RATE while pending, REFILL_RATE while on (chronic drugs only)
        kinds = [d[3] for d in DRUGS]
        self.pend_cols = np.array([self.f[f"pending:{d}"] for d in drugs])
        self.on_cols = np.array([self.f[f"on:{d}"] for d in drugs])
        self.start_rate = np.array([START_RATE[k] for k in kinds])
        self.refill_rate = np.array([REFILL_RATE if k == "chronic" else 0.0 for k in kinds])

        # labs: rate = routine + M @ feats; mean = mu + S @ feats
        self.lab_rate = np.array([lab.rate for lab in LABS])
        self.M = np.zeros((L, F))
        self.S = np.zeros((L, F))
        lab_row = {lab.code: i for i, lab in enumerate(LABS)}
        for table, mat in ((MONITORING, self.M), (SHIFTS, self.S)):
            for feature, per_lab in table.items():
                for lab, value in per_lab.items():
                    mat[lab_row[lab], self.f[feature]] += value
        self.high_cols = np.array([self.f[f"high:{lab}"] for lab in labs])
        # contiguous transposes: feats @ W.T through a strided view is twice as slow
        self.Wt, self.once_t, self.Mt = (np.ascontiguousarray(m.T) for m in (self.W, self.once, self.M))
        # the labs' parameters as arrays indexed by lab number
        self.lab_mu = np.array([lab.mean for lab in LABS])
        self.lab_sd = np.array([lab.sd for lab in LABS])
        self.lab_rho = np.array([lab.rho for lab in LABS])
        self.lab_decimals = np.array([lab.decimals for lab in LABS])
        self.lab_threshold = np.array([lab.threshold for lab in LABS])
        self.lab_log = np.array([lab.log for lab in LABS])
        self.lab_low = np.array([lab.low for lab in LABS])

        # what each event switches on / off (apply): chronic diagnosis -> has + pending drugs,
        # acute diagnosis -> pending drugs, drug -> not pending (+ on if chronic)
        self.sets = np.zeros((K, F), dtype=bool)
        self.clears = np.zeros((K, F), dtype=bool)
        for c in chronic:
            self.sets[self.index[c], self.f[f"has:{c}"]] = True
        for d, _, indications, kind in DRUGS:
            for ind in indications:
                self.sets[self.index[ind], self.f[f"pending:{d}"]] = True
            self.clears[self.index[d], self.f[f"pending:{d}"]] = True
            if kind == "chronic":
                self.sets[self.index[d], self.f[f"on:{d}"]] = True

    # ---------------------------------------------------------------- the process

    def initial_state(self, female, age_years):
        """State of N patients before the intake measurement: sex and age decade only."""
        n = len(female)
        feats = np.zeros((n, len(self.features)))
        feats[:, self.f["female"]] = female
        feats[:, self.f["age"]] = np.floor(np.asarray(age_years) / 10.0) - 5.0
        return State(feats, np.full((n, len(LABS)), np.nan), np.ones(n, dtype=bool))

    def rates(self, state):
        """(N, K) rate per year of every code in each patient's state (0 for the dead)."""
        feats = state.feats
        out = np.empty((len(feats), len(self.codes)))
        dx = np.exp(self.log_base + feats @ self.Wt) * (1.0 - feats @ self.once_t)
        out[:, self.dx_idx] = dx
        out[:, self.drug_idx] = (feats[:, self.pend_cols] * self.start_rate
                                 + feats[:, self.on_cols] * self.refill_rate)
        out[:, self.lab_idx] = self.lab_rate + feats @ self.Mt
        out[~state.alive] = 0.0
        return out

    def next_code_probs(self, state):
        """(N, K) true distribution of the next event's code: rate_k / total rate."""
        r = self.rates(state)
        return r / r.sum(axis=1, keepdims=True)

    def _lab_mean(self, state, rows, labs):
        """Mean of each lab `labs[i]` for patient `rows[i]` (log scale for log labs)."""
        return self.lab_mu[labs] + np.einsum("nf,nf->n", state.feats[rows], self.S[labs])

    def draw_values(self, state, rows, labs, rng):
        """Values of lab numbers `labs` measured now for patients `rows` (float32-exact)."""
        sd, rho = self.lab_sd[labs], self.lab_rho[labs]
        last = state.resid[rows, labs]
        eps = rng.standard_normal(len(rows))
        resid = np.where(np.isnan(last), sd * eps,  # the first measurement: stationary draw
                         rho * np.nan_to_num(last) + np.sqrt(1.0 - rho**2) * sd * eps)
        raw = self._lab_mean(state, rows, labs) + resid
        values = np.where(self.lab_log[labs], np.exp(raw), raw)
        scale = 10.0 ** self.lab_decimals[labs]
        values = np.maximum(np.round(values * scale) / scale, self.lab_low[labs])
        return values.astype(np.float32).astype(np.float64)  # as MEDS stores them

    def apply(self, state, rows, codes, values):
        """Update patients `rows` after events `codes` (K indices) with `values` (NaN if none)."""
        feats = state.feats
        feats[rows] = np.where(self.sets[codes], 1.0, np.where(self.clears[codes], 0.0, feats[rows]))
        # an indication does not make a drug pending again while the patient is on it
        feats[np.ix_(rows, self.pend_cols)] *= 1.0 - feats[np.ix_(rows, self.on_cols)]
        labs = self.lab_of[codes]
        is_lab = labs >= 0
        if is_lab.any():
            lrows, llabs, v = rows[is_lab], labs[is_lab], np.asarray(values, dtype=np.float64)[is_lab]
            g = np.where(self.lab_log[llabs], np.log(np.where(self.lab_log[llabs], v, 1.0)), v)
            state.resid[lrows, llabs] = g - self._lab_mean(state, lrows, llabs)
            feats[lrows, self.high_cols[llabs]] = (v >= self.lab_threshold[llabs]).astype(float)
        state.alive[rows[codes == self.death]] = False

    def simulate(self, state, t, t_end, rng):
        """Run the process for every patient from time t (days) until t_end or death.

        `state` is updated in place. Returns the events as arrays (row, time in days, code
        index, value or NaN), ordered by row then time.
        """
        t = np.asarray(t, dtype=np.float64).copy()
        active = np.flatnonzero(state.alive & (t < t_end))
        out_rows, out_t, out_k, out_v = [], [], [], []
        while active.size:
            sub = state.take(active)
            r = self.rates(sub)
            total = r.sum(axis=1)
            t_next = t[active] + rng.exponential(1.0, active.size) / total * YEAR_DAYS
            ok = t_next < t_end[active]
            active, r, total, t_next = active[ok], r[ok], total[ok], t_next[ok]
            if not active.size:
                break
            # inverse-CDF draw of the next code from rate / total
            u = rng.random(active.size) * total
            k = (np.cumsum(r, axis=1) < u[:, None]).sum(axis=1)
            k = np.minimum(k, len(self.codes) - 1)
            values = np.full(active.size, np.nan)
            labs = self.lab_of[k]
            is_lab = labs >= 0
            values[is_lab] = self.draw_values(state, active[is_lab], labs[is_lab], rng)
            self.apply(state, active, k, values)
            t[active] = t_next
            out_rows.append(active)
            out_t.append(t_next)
            out_k.append(k)
            out_v.append(values)
            active = active[state.alive[active]]
        if not out_rows:
            empty = np.zeros(0)
            return empty.astype(int), empty, empty.astype(int), empty
        rows, times = np.concatenate(out_rows), np.concatenate(out_t)
        order = np.lexsort((times, rows))
        return rows[order], times[order], np.concatenate(out_k)[order], np.concatenate(out_v)[order]

    # ---------------------------------------------------------------- patients

    def generate(self, n, seed=0):
        """n patients as one MEDS-ordered table of numpy columns: subject_id (0..n-1), time
        (int64 microseconds since 1970, or None for the static sex row: `time_null`), code
        (str), numeric_value (float, NaN if none)."""
        rng = np.random.default_rng(seed)
        female = rng.random(n) < 0.5
        age_days = np.floor(rng.uniform(*AGE_RANGE, n) * YEAR_DAYS)
        lo, hi = _epoch_day(INTAKE_YEARS[0]), _epoch_day(INTAKE_YEARS[1])
        intake = lo + rng.random(n) * (hi - lo)  # days since 1970, with a time of day
        intake = np.round(intake * 1440) / 1440  # to the minute
        state = self.initial_state(female, age_days / YEAR_DAYS)
        rows = np.arange(n)
        bmi_k = np.full(n, self.index[INTAKE_LAB])
        bmi = self.draw_values(state, rows, self.lab_of[bmi_k], rng)
        self.apply(state, rows, bmi_k, bmi)
        t_end = np.full(n, float(_epoch_day(FOLLOW_UP_END)))
        ev_rows, ev_t, ev_k, ev_v = self.simulate(state, intake, t_end, rng)

        # assemble: per patient [sex (static), birth, intake BMI, process events...]
        counts = np.bincount(ev_rows, minlength=n) + 3
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        total = int(counts.sum())
        subject = np.repeat(rows, counts)
        time_days = np.empty(total)
        codes = np.empty(total, dtype=object)
        values = np.full(total, np.nan)
        codes[starts] = np.where(female, "GENDER//F", "GENDER//M")
        time_days[starts] = np.nan
        codes[starts + 1] = BIRTH
        time_days[starts + 1] = intake - age_days
        codes[starts + 2] = INTAKE_LAB
        time_days[starts + 2] = intake
        values[starts + 2] = bmi
        pos = starts[ev_rows] + 3 + (np.arange(len(ev_rows)) - np.searchsorted(ev_rows, ev_rows))
        codes[pos] = np.array(self.codes, dtype=object)[ev_k]
        time_days[pos] = ev_t
        values[pos] = ev_v
        time_null = np.isnan(time_days)
        time_us = np.where(time_null, 0, np.round(np.nan_to_num(time_days) * 86_400) * 1_000_000)
        return dict(subject_id=subject.astype(np.int64), time=time_us.astype(np.int64),
                    time_null=time_null, code=codes, numeric_value=values)

    def replay(self, patients, stop=None):
        """Replay patients' MEDS rows through the process, side by side.

        patients: list of (times, codes, values) per patient, as MEDS orders them (times in
        int64 microseconds; the static row's time is not read). Row 0 must be the sex, row 1
        MEDS_BIRTH, row 2 the intake BMI; rows 3.. are process events.
        stop: optional number of process events to replay per patient (default all).
        Returns (truth, state): truth[i] is an (n_i, K) array whose row j is the true
        distribution of the code of patient i's process event j (MEDS row 3 + j) given all the
        rows before it; `state` is the State (N = len(patients)) after the replayed events.
        Raises ValueError for rows that this process cannot have produced.
        """
        for times, codes, _ in patients:
            if (len(codes) < 3 or codes[0] not in STATIC_CODES or codes[1] != BIRTH
                    or codes[2] != INTAKE_LAB):
                raise ValueError("not a synthetic_ehr timeline: expected the sex, MEDS_BIRTH and "
                                 f"the intake BMI first, got {list(codes[:3])}")
        n = len(patients)
        female = np.array([p[1][0] == "GENDER//F" for p in patients])
        age = np.array([(int(p[0][2]) - int(p[0][1])) / DAY_US / YEAR_DAYS for p in patients])
        state = self.initial_state(female, age)
        rows = np.arange(n)
        self.apply(state, rows, np.full(n, self.index[INTAKE_LAB]),
                   np.array([float(p[2][2]) for p in patients]))
        lengths = np.array([len(p[1]) - 3 for p in patients], dtype=int)
        if stop is not None:
            lengths = np.minimum(lengths, np.asarray(stop, dtype=int))
        width = int(lengths.max(initial=0))
        ks = np.zeros((n, width), dtype=int)  # process events, padded to the longest
        vs = np.zeros((n, width))
        for i, (p, m) in enumerate(zip(patients, lengths)):
            try:
                ks[i, :m] = [self.index[c] for c in p[1][3:3 + m]]
            except KeyError as err:
                raise ValueError(f"not a synthetic_ehr timeline: unknown code {err.args[0]!r}") from None
            vs[i, :m] = np.asarray(p[2][3:3 + m], dtype=np.float64)
        probs, at = [], []
        for j in range(width):
            live = np.flatnonzero(lengths > j)
            probs.append(self.next_code_probs(state.take(live)))
            at.append(live)
            self.apply(state, live, ks[live, j], vs[live, j])
        # per-step blocks -> per-patient arrays: order the rows by (patient, step)
        probs = np.concatenate(probs) if probs else np.zeros((0, len(self.codes)))
        order = np.argsort(np.concatenate(at) if at else np.zeros(0, int), kind="stable")
        truth = np.split(probs[order], np.cumsum(lengths)[:-1])
        return truth, state


# ----------------------------------------------------------------------------------------
# as a MEDS dataset

METADATA_FILE = "synthetic_ehr.json"  # in metadata/: marks a dataset this module wrote


def parents(code):
    """Parent codes for metadata/codes.parquet: the ICD-10 category, the ATC level 4."""
    system, _, rest = code.partition("//")
    if system == "ICD10CM" and "." in rest:
        return [f"ICD10CM//{rest.split('.')[0]}"]
    if system == "ATC" and len(rest) == 7:
        return [f"ATC//{rest[:5]}"]
    return []


def write_synthetic(out_dir, n_subjects=10_000, seed=0, fractions=(0.8, 0.1, 0.1), force=False):
    """Generate n_subjects patients and write them as a MEDS dataset (train / tuning /
    held_out by `fractions`). Returns out_dir."""
    from gpt.events.meds_data import Timelines, write_dataset

    process = SyntheticEHR()
    cols = process.generate(n_subjects, seed)
    timelines = Timelines.from_columns(**cols)
    n_train = int(round(fractions[0] * n_subjects))
    n_tuning = int(round(fractions[1] * n_subjects))
    bounds = {"train": (0, n_train), "tuning": (n_train, n_train + n_tuning),
              "held_out": (n_train + n_tuning, n_subjects)}
    splits = {s: timelines.select(np.arange(a, b)) for s, (a, b) in bounds.items()}
    codes = {c: (process.descriptions[c], parents(c)) for c in
             [*STATIC_CODES, BIRTH, *process.codes]}
    info = {"generator": "gpt.events.synthetic", "version": VERSION, "n_subjects": n_subjects,
            "seed": seed, "fractions": list(fractions)}
    return write_dataset(out_dir, splits, "synthetic_ehr", codes=codes,
                         extra_metadata={METADATA_FILE: info}, force=force)


def synthetic_info(meds_dir):
    """The generator settings of a dataset written by write_synthetic, or None."""
    import json
    from pathlib import Path

    path = Path(meds_dir) / "metadata" / METADATA_FILE
    if not path.is_file():
        return None
    info = json.loads(path.read_text())
    return info if info.get("generator") == "gpt.events.synthetic" else None
