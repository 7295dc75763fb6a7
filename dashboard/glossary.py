"""The dashboard's glossary: every metric, uncertainty source and method name a page shows, in one or two plain
sentences for an ML student. Defined once here; pages use `help(term)` for `help=` tooltips (widgets, column configs,
metrics) and `common.glossary(*terms)` for a page's "Glossary" expander. No streamlit import: tests read it directly.

    glossary.help("MAE")                 # the entry's text; KeyError for a term with no entry
    glossary.help("MAE", "95 % CI")      # several entries, each headed by its term
    glossary.markdown(["MAE", "AURC"])   # a bulleted list for an expander
"""
from __future__ import annotations

TERMS: dict[str, str] = {
    # ---- age metrics ----------------------------------------------------------------------------------------------
    "MAE": "Mean absolute error: the average of |predicted age − true age|, in years. Lower is better: 4.6 means the "
           "predictions are off by 4.6 years on average.",
    "RMSE": "Root mean squared error, in years. Like MAE, but errors are squared before averaging, so a few large "
            "misses weigh more; RMSE ≥ MAE always.",
    "CS@5": "Cumulative score at 5 years: the share of images whose age error is at most 5 years. Higher is better.",
    "±10y": "The share of images whose age error is at most 10 years. Higher is better.",
    "bias": "Signed bias: the average of (predicted − true age). Positive means the model guesses too old, negative "
            "too young; errors in both directions cancel here, so a model can have a large MAE and zero bias.",
    "regression to the mean": "Models pull their guesses towards the typical training age: children are predicted "
                              "older and old people younger. It shows as positive bias at young ages and negative "
                              "bias at old ones.",
    # ---- statistics -----------------------------------------------------------------------------------------------
    "95 % CI": "95 % confidence interval [low, high]: a range computed so that, over repeats of the test with new "
               "images from the same source, it holds the metric's true value 95 times in 100. When two models' "
               "intervals overlap a lot, the data cannot tell them apart.",
    "n": "The number of images a number is computed on. Few images give wide confidence intervals.",
    "Pareto front": "The models no other model beats on both axes at once (more accurate and cheaper). Every model "
                    "off the front has another that is at least as good on both; which front model to pick depends "
                    "on how much accuracy a unit of cost is worth to you.",
    # ---- gender (binary classifier) metrics -----------------------------------------------------------------------
    "gender accuracy": "The share of images whose predicted gender (P(female) ≥ 0.5) matches the label. Higher is "
                       "better.",
    "gender F1": "The F1 score of predicting 'female': the harmonic mean of precision (how many predicted women are "
                 "women) and recall (how many women are found). 1 is perfect.",
    "AUC": "Area under the ROC curve: the chance that a randomly drawn positive image (e.g. a woman) gets a higher "
           "score than a randomly drawn negative one. 0.5 is guessing, 1 is perfect; it does not depend on the 0.5 "
           "decision threshold.",
    "Young AUC": "On datasets without ages (CelebA-HQ, which has a binary 'Young' label): how well the predicted age "
                 "separates faces labelled Young from the others, as an AUC (1 = every Young face predicted younger "
                 "than every other face, 0.5 = chance).",
    "TPR": "True-positive rate (recall): of the images that truly have the attribute (e.g. are female), the share "
           "the model flags.",
    "FPR": "False-positive rate: of the images that do not have the attribute, the share the model wrongly flags.",
    "threshold": "A classifier says 'present' when its probability is at least the threshold: each model's is "
                 "chosen on its val predictions in the inference mode shown (else 0.5). Moving it trades false "
                 "positives against missed positives.",
    "accuracy": "The share of images the classifier decides right at its threshold. Misleading for a rare "
                "attribute: always saying 'absent' already scores high.",
    "balanced accuracy": "The mean of the true-positive and true-negative rates: 0.5 is chance whatever the "
                         "attribute's frequency, so rare attributes are judged fairly.",
    "F1": "The harmonic mean of precision (of the images flagged, the share truly positive) and recall (TPR). "
          "High only when the classifier both finds the positives and rarely flags negatives.",
    "ROC AUC": "The chance that a random positive image gets a higher probability than a random negative one: "
               "1 = perfect ranking, 0.5 = chance. It ignores the threshold.",
    "confident learning": "Finding likely label errors from out-of-sample probabilities (cleanlab): an image whose "
                          "label the model contradicts with more confidence than it usually has for that class.",
    "linear probe": "Transfer learning with the pretrained backbone frozen: only the head on top of its features "
                    "learns. Cheap, and a measure of how much the pretrained features already know.",
    "multi-task": "One network with several heads (age, gender, race, attributes) trained together, each head's loss "
                  "masked where a dataset lacks its label. Sharing can help a task or hurt it.",
    "Bonferroni": "A correction for testing many slices at once: each interval is widened as if for a 95 % / m "
                  "confidence level (m candidates), so the listed slices are unlikely to be flukes of the search.",
    "effect": "How much worse the slice is than the model overall: the slice's error minus the overall error.",
    # ---- fairness -------------------------------------------------------------------------------------------------
    "MAE gap": "The worst group's MAE minus the best group's MAE, in years (groups with enough images only). 0 means "
               "every group gets equally accurate ages.",
    "gender acc gap": "The best group's gender accuracy minus the worst group's. 0 means the gender classifier is "
                      "equally accurate for every group.",
    "gap beyond CIs?": "Yes when the worst and best groups' 95 % confidence intervals do not overlap, so the gap is "
                       "unlikely to be noise from a small sample.",
    "equalized odds": "A fairness criterion for a classifier: its true-positive rate and its false-positive rate are "
                      "the same in every group. The equalized-odds difference is the largest gap in either rate across "
                      "groups (0 = satisfied).",
    "equal opportunity": "A weaker fairness criterion than equalized odds: only the true-positive rate must be the "
                         "same in every group (everyone who has the attribute is equally likely to be found).",
    "disparity": "How far apart groups are on a metric (a gap between the best and worst group). Lower is fairer.",
    # ---- uncertainty ----------------------------------------------------------------------------------------------
    "σ": "Sigma: a model's own estimate of how unsure it is about an age, in years, read as the standard deviation of "
         "a Gaussian around the predicted age (about 68 % of true ages should fall within ±1σ).",
    "aleatoric": "Aleatoric uncertainty: doubt that comes from the image itself (blur, an ambiguous face, noisy "
                 "labels). Models with a distribution head (DLDL, Gaussian/Laplace NLL, DEX) predict it directly; more "
                 "training data does not make it go away.",
    "epistemic": "Epistemic uncertainty: the model's doubt about its own weights, large on faces unlike its training "
                 "data. Estimated by how much MC-Dropout passes or ensemble members disagree; more training data "
                 "shrinks it.",
    "MC-Dropout": "Monte-Carlo dropout: dropout is left on at test time and the image is passed through the network "
                  "N times; the spread of the N ages estimates the epistemic uncertainty, their mean is the prediction.",
    "TTA": "Test-time augmentation: predict on the image and on altered copies of it (mirrored, cropped) and average. "
           "It usually lowers the error a little, and the spread across the copies is another uncertainty estimate.",
    "ensemble spread": "The standard deviation of an ensemble's member predictions for one image: how much "
                       "independently trained networks disagree (an estimate of epistemic uncertainty).",
    "total (aleatoric ⊕ epistemic)": "Both kinds of uncertainty combined: √(σ_aleatoric² + σ_epistemic²), as for "
                                     "two independent sources of error.",
    "coverage": "For uncertainty intervals: the share of true ages that fall inside the predicted μ ± zσ intervals. "
                "A calibrated 90 % interval covers 90 % of images; less means the model is over-confident.",
    "reliability": "A reliability (calibration) diagram: what actually happened (observed coverage, observed share) "
                   "against what the model promised (nominal coverage, predicted probability). On the diagonal = "
                   "calibrated; below it = over-confident.",
    "calibration error": "Mean |observed coverage − nominal coverage| over the 68 %, 90 % and 95 % intervals. 0 means "
                         "the σ are honest.",
    "risk–coverage": "Sort the images from most to least certain (smallest σ first), keep a fraction (the coverage), "
                     "and plot the MAE of the kept images. If σ is useful the curve starts low and rises; a flat curve "
                     "means σ does not tell good predictions from bad ones.",
    "AURC": "Area under the risk–coverage curve: the MAE averaged over every fraction of images kept. Lower is "
            "better; it rewards both accuracy and uncertainty that ranks errors well.",
    "oracle": "The risk–coverage curve obtained by dropping images in order of their true error: the best any "
              "uncertainty estimate could do. The closer a model's curve is to it, the better its σ.",
    "ECE": "Expected calibration error of the gender probability: bin the predicted P(female), and average the gap "
           "between each bin's predicted probability and its observed share of women, weighted by bin size. 0 = a "
           "prediction of 80 % is right 80 % of the time.",
    # ---- inference modes ------------------------------------------------------------------------------------------
    "inference mode": "How predictions were made: plain (one pass), flip / flip+crop (test-time augmentation) and "
                      "mcN (N MC-Dropout passes). Numbers from different modes are never compared on one page.",
    "plain": "Inference mode: one deterministic forward pass on the image.",
    "flip": "Inference mode: the average of the predictions on the image and its mirror image (TTA).",
    "flip+crop": "Inference mode: the average over the image, its mirror image and 90 % centre crops of both (TTA).",
    "mcN": "Inference mode (mc10, flip+mc10, ...): N stochastic passes with dropout on (MC-Dropout), averaged; their "
           "spread is the epistemic σ.",
    # ---- kinds of model and methods -------------------------------------------------------------------------------
    "kind": "What a model is: single (one trained network), ensemble (several averaged), adapted (a network with "
            "re-estimated BatchNorm statistics, AdaBN) or peer (an external model trained elsewhere).",
    "single": "One trained network (backbone + age formulation + gender head).",
    "ensemble": "Several trained networks whose predictions are averaged. Usually more accurate than any member, and "
                "the members' disagreement measures uncertainty; costs the sum of its members.",
    "adapted": "A trained network whose BatchNorm statistics were re-estimated on other images (AdaBN), without "
               "changing any learnt weight.",
    "peer": "An external model, not trained in this zoo, benchmarked on the same images for comparison.",
    "AdaBN": "Adaptive batch normalisation: re-estimate a network's BatchNorm means and variances on unlabelled "
             "images of a new dataset. No labels and no training, yet it often narrows the gap to that dataset.",
    "BN recalibration": "AdaBN on the model's own training images without augmentation: BatchNorm statistics "
                        "collected under strong augmentation can be off for clean test images.",
    "sweep": "A family of runs that differ in one setting (e.g. formulation/dldl vs formulation/l1), trained with the "
             "same budget so that the setting's effect can be measured.",
    "single-dataset twin": "The same recipe and training budget trained on the primary dataset alone: the pair shows "
                           "what the added training data changed.",
    "fallback crop": "When the face detector finds no face, the model is given the whole image (a centre crop) "
                     "instead: its answer then is not about anyone's face.",
    "faces found": "The share of a dataset's images where the face detector found a face; the rest were predicted on "
                   "the fallback crop.",
    "source": "Where a model comes from: zoo (trained here) or an external peer.",
    "from": "Where a leaderboard row's numbers come from: the bench DB (per-image predictions on the evaluation set, "
            "with 95 % CIs) or the model's run.json (metrics at registration on its full test split, no CI).",
    # ---- cost -----------------------------------------------------------------------------------------------------
    "params": "The number of learnt weights, in millions: how big the model file and its memory are.",
    "FLOPs": "Floating-point operations for one image's forward pass (MFLOPs = millions): the compute cost, "
             "independent of the hardware.",
    "img/s": "Images per second at inference, measured on the CPU of the machine that trained the model (batches of "
             "64 face crops, face detection not included). Higher is faster.",
    # ---- training -------------------------------------------------------------------------------------------------
    "train loss": "The training objective, averaged over an epoch. It should fall; its scale depends on the "
                  "formulation, so compare it only within one model.",
    "val MAE": "MAE on the validation split after each epoch. The checkpoint kept is the best epoch on it (model "
               "selection uses val, reported numbers use test).",
    "learning rate": "The step size of the optimiser per epoch, as set by the schedule (warm-up, then decay).",
    "best epoch": "The epoch with the lowest validation MAE: its weights are the ones registered.",
    "split": "Which part of the dataset the images come from: train, val or test. Models are selected on val; "
             "report test.",
    # ---- age formulations (zoo.formulations) ----------------------------------------------------------------------
    "formulation": "How the network turns its features into an age: a regression, a classification over ages, an "
                   "ordinal or a distribution head, each with its loss.",
    "l1": "Formulation: plain regression of the age with an L1 (absolute error) loss, which optimises MAE directly. "
          "No uncertainty.",
    "l2": "Formulation: plain regression with a squared-error (MSE) loss. No uncertainty.",
    "smooth_l1": "Formulation: Huber / smooth-L1 regression: squared error for small misses, absolute error for large "
                 "ones, so outliers weigh less than in l2. No uncertainty.",
    "gaussian_nll": "Formulation: predicts a mean age and a per-image σ and is trained with the Gaussian negative "
                    "log-likelihood (Kendall & Gal 2017); σ is its aleatoric uncertainty.",
    "laplace_nll": "Formulation: like gaussian_nll with a Laplace distribution (an L1-like fit with a learnt "
                   "per-image scale).",
    "gaussian_nll_homo": "Formulation: Gaussian NLL with one σ shared by every image (homoscedastic): a baseline for "
                         "the per-image σ.",
    "laplace_nll_homo": "Formulation: Laplace NLL with one scale shared by every image (homoscedastic).",
    "dex": "DEX (Rothe et al. 2015): age as a 101-way classification; the prediction is the expected age under the "
           "softmax, and the softmax's spread gives σ.",
    "dex_ls": "DEX trained with label smoothing, which keeps the softmax from becoming over-confident.",
    "DLDL": "Deep label distribution learning (DLDL-v2, Gao et al. 2018): the target is a Gaussian over neighbouring "
            "ages rather than one age, trained with a KL loss plus L1 on the expected age; the predicted "
            "distribution's spread gives σ. Written dldl in configs.",
    "mean_variance": "Formulation: the mean-variance loss (Pan et al. 2018): classification plus penalties on the "
                     "distribution's mean error and its variance, giving a sharp, centred age distribution.",
    "residual_dex": "Formulation: coarse age bins plus a regressed offset within the bin (as in SSR-Net).",
    "coral": "CORAL (Cao et al. 2020): ordinal regression as 100 binary questions 'older than k?' sharing one weight "
             "vector, so the answers are rank-consistent; the age is the number of yeses.",
    "corn": "CORN (Shi et al. 2021): ordinal regression with conditional questions 'older than k, given older than "
            "k−1?', each trained only on the images that qualify.",
    # ---- gender losses (zoo.gender) -------------------------------------------------------------------------------
    "bce": "Gender loss: binary cross-entropy on the P(female) logit.",
    "focal": "Gender loss: focal loss (Lin et al. 2017): cross-entropy that down-weights images the model already "
             "gets right, to focus on hard ones.",
    "weighted_bce": "Gender loss: binary cross-entropy with a larger weight on the rarer class.",
    # ---- balancing strategies (zoo.balance) -----------------------------------------------------------------------
    "age balance": "How training counters the skewed age distribution (few children and old people): none, "
                   "inv_freq, sqrt_inv, lds or balanced_sampler.",
    "gender balance": "How training counters a skewed gender ratio: none, undersample or reweight.",
    "inv_freq": "Age balance: weight each image's loss by 1 / (how common its age is), clipped, so rare ages count as "
                "much as common ones.",
    "sqrt_inv": "Age balance: weight by 1 / √(how common its age is): a milder version of inv_freq.",
    "lds": "Age balance: label distribution smoothing (Yang et al. 2021): inverse-√ weights computed on an age "
           "histogram smoothed with a Gaussian, since neighbouring ages look alike.",
    "balanced_sampler": "Age balance: draw training batches evenly from 5-year age bins instead of reweighting the "
                        "loss.",
    "undersample": "Balance: train on as many images of the majority group as there are of the minority group.",
    "reweight": "Gender balance: weight the loss so that each gender contributes half of it.",
    "weights": "Group balance: weight the loss so that every group contributes equally.",
    # ---- data studies ---------------------------------------------------------------------------------------------
    "augmentation": "Random changes to training images (none; light: flips, small zooms and shifts, mild brightness "
                    "and contrast; strong: also rotation, colour and greyscale) so the network learns what does not "
                    "change the age.",
    "learning curve": "The error of the same recipe trained on a growing fraction of the training split: if it is "
                      "still falling at 100 %, more data would help.",
    "init": "How the backbone's weights start: imagenet (pretrained on ImageNet photos) or scratch (random).",
    "data source": "What the model trained on: real photos, synthetic (generated) faces, or a mix of both.",
    "label fidelity": "For generated faces: the MAE between the age the generator was asked for and the age a model "
                      "trained on real faces sees. Near the model's real-test MAE = the faces look their age.",
    "Fréchet distance": "How far two sets of images are apart in a network's feature space (as in FID): the "
                        "distance between two Gaussians fitted to their features. Lower = more alike.",
    "gender agreement": "The share of generated faces whose predicted gender matches the gender they were generated "
                        "with.",
    # ---- robustness (bench.perturb) -------------------------------------------------------------------------------
    "perturbation": "A controlled degradation applied to the test images (darker light, blur, JPEG artefacts, ...) "
                    "to measure how a model's error grows when photos are worse than the training photos.",
    "severity": "How strong a perturbation is: 0 = the clean image, then 1 (mild) to 3 (strong).",
    "brightness": "Perturbation: darker lighting, the exposure scaled to 50 / 30 / 15 % in linear light.",
    "gamma": "Perturbation: brighter, washed-out lighting, a gamma curve with γ = 0.7 / 0.5 / 0.3.",
    "blur": "Perturbation: Gaussian blur of 1 / 2 / 4 % of the image side (out of focus or motion).",
    "jpeg": "Perturbation: re-encoded as JPEG at quality 30 / 15 / 5 (compression blocks and colour bleeding).",
    "downscale": "Perturbation: shrunk by 2 / 4 / 8 and scaled back up (a low-resolution photo).",
    "background": "Perturbation: everything outside the central face ellipse replaced by a heavy blur / flat grey / "
                  "noise, to test whether the model relies on the background.",
    # ---- slices ---------------------------------------------------------------------------------------------------
    "slice": "A subset of images defined by attribute values (e.g. age group 0-12 and female), to find where a model "
             "does worse than overall.",
    "support": "The number of images in a slice. Tiny slices give noisy numbers, so a minimum support is required.",
    "effect size": "How much worse a slice is than the model overall (slice error − overall error).",
    # ---- embedding map ---------------------------------------------------------------------------------------------
    "embedding map": "Each image drawn as a dot where the model's penultimate features (what its age and gender heads "
                     "read) put it, squeezed to 2-D: images close together look alike to the model.",
    "UMAP": "Uniform Manifold Approximation and Projection (McInnes et al. 2018): a 2-D layout that keeps each point's "
            "nearest neighbours close. Distances between far-apart clusters mean little.",
    "PCA": "Principal component analysis: the two directions along which the features vary most. A faithful but "
           "coarse map; used when there are too few images for UMAP.",
    # ---- backbones (zoo.backbones) --------------------------------------------------------------------------------
    "backbone": "The feature-extracting network under the age and gender heads (a ResNet, EfficientNet, "
                "MobileNet, ...). Bigger backbones are usually more accurate and slower.",
    "seed_cnn": "Backbone: the seed notebooks' plain baseline CNN (4 conv blocks, then a dense layer), trained from "
                "scratch.",
    "softbio_cnn": "Backbone: the soft-biometric seed's small CNN for 80 px faces (3 conv blocks, a dense layer of "
                   "512).",
    "resnet18": "Backbone: ResNet-18 (He et al. 2016), a residual convolutional network of 11 M parameters.",
    "resnet50": "Backbone: ResNet-50 (about 24 M parameters): a deeper, more accurate and slower ResNet.",
    "efficientnet_b0": "Backbone: EfficientNet-B0 (Tan & Le 2019): a network scaled for accuracy per FLOP.",
    "efficientnet_b2": "Backbone: EfficientNet-B2, a wider and deeper EfficientNet than B0.",
    "efficientnet_lite0": "Backbone: EfficientNet-Lite0, EfficientNet without squeeze-excitation and with ReLU6, made "
                          "for mobile CPUs.",
    "efficientnet_lite1": "Backbone: EfficientNet-Lite1, a larger Lite variant.",
    "efficientnet_lite2": "Backbone: EfficientNet-Lite2, a larger Lite variant.",
    "mobilenetv2_100": "Backbone: MobileNetV2 (Sandler et al. 2018): inverted residual blocks, made for phones.",
    "mobilenetv3_small_100": "Backbone: MobileNetV3-Small (Howard et al. 2019): the smallest, fastest network of the "
                             "zoo.",
    "mobilenetv3_large_100": "Backbone: MobileNetV3-Large: a fast network made for phones.",
    "vgg16_bn": "Backbone: VGG-16 with batch norm (Simonyan & Zisserman 2015): a large plain CNN, the classic DEX "
                "backbone.",
}

_INDEX = {" ".join(k.lower().split()): k for k in TERMS}
ALIASES = {"dldl": "DLDL", "cs@5 %": "CS@5", "gender acc": "gender accuracy", "ci": "95 % CI", "mflops": "FLOPs",
           "equalized-odds diff": "equalized odds", "eq_odds_diff": "equalized odds", "mc-dropout σ": "MC-Dropout",
           "sigma": "σ", "aurc (mae)": "AURC", "adaptive batch norm": "AdaBN", "risk-coverage": "risk–coverage",
           "params (m)": "params"}


def key(term: str) -> str:
    """The glossary's spelling of `term` (case and spacing do not matter; a few aliases); KeyError if none."""
    norm = " ".join(str(term).lower().split())
    if norm in ALIASES:
        return ALIASES[norm]
    if norm in _INDEX:
        return _INDEX[norm]
    raise KeyError(f"no glossary entry for {term!r}: add it to dashboard/glossary.py TERMS")


def has(term) -> bool:
    """Whether `term` has an entry (for names read from data, e.g. a run's formulation, that may be new)."""
    try:
        key(term)
        return True
    except KeyError:
        return False


def help(*terms: str) -> str:  # named for the `help=` argument it fills
    """The tooltip text for one term, or for several, each headed by its term (Streamlit renders markdown)."""
    if len(terms) == 1:
        return TERMS[key(terms[0])]
    return "\n\n".join(f"**{key(t)}**: {TERMS[key(t)]}" for t in terms)


def markdown(terms) -> str:
    """A bulleted list of the terms' entries, in the order given (repeats dropped)."""
    keys = list(dict.fromkeys(key(t) for t in terms))
    return "\n".join(f"- **{k}**: {TERMS[k]}" for k in keys)
