"""The report's reference list (references.md.j2), as data, and the citation keys it answers.

A citation in the report's text is written ``(Author, Year)``, ``(Author & Author, Year)`` or
``(Author et al., Year)``, several separated by ``;`` inside one pair of parentheses. Each
entry's ``key`` is that text (``"Balles & Hennig, 2018"``); :func:`cited_keys` finds them in a
template, so a test can check that every key a template cites has an entry here."""

from __future__ import annotations

import re
from collections.abc import Iterable

REFERENCES: tuple[dict[str, str], ...] = (
    {"key": "Balles & Hennig, 2018",
     "entry": "Lukas Balles and Philipp Hennig. Dissecting Adam: the sign, magnitude and "
              "variance of stochastic gradients. ICML 2018, PMLR 80."},
    {"key": "Breiman et al., 1984",
     "entry": "Leo Breiman, Jerome H. Friedman, Richard A. Olshen and Charles J. Stone. "
              "Classification and Regression Trees. Wadsworth, 1984 (the one-standard-error "
              "rule)."},
    {"key": "Dahl et al., 2023",
     "entry": "George E. Dahl, Frank Schneider, Zachary Nado, Naman Agarwal, et al. "
              "Benchmarking neural network training algorithms (AlgoPerf). arXiv:2306.07179, "
              "2023."},
    {"key": "Dangel et al., 2020",
     "entry": "Felix Dangel, Frederik Kunstner and Philipp Hennig. BackPACK: packing more into "
              "backprop. ICLR 2020."},
    {"key": "Defazio & Bottou, 2019",
     "entry": "Aaron Defazio and Léon Bottou. On the ineffectiveness of variance reduced "
              "optimization for deep learning. NeurIPS 2019."},
    {"key": "Goodfellow, 2015",
     "entry": "Ian Goodfellow. Efficient per-example gradient computations. arXiv:1510.01799, "
              "2015."},
    {"key": "Goyal et al., 2017",
     "entry": "Priya Goyal, Piotr Dollár, Ross Girshick, Pieter Noordhuis, Lukasz Wesolowski, "
              "Aapo Kyrola, Andrew Tulloch, Yangqing Jia and Kaiming He. Accurate, large "
              "minibatch SGD: training ImageNet in 1 hour. arXiv:1706.02677, 2017 (linear "
              "scaling of the learning rate)."},
    {"key": "Hastie et al., 2009",
     "entry": "Trevor Hastie, Robert Tibshirani and Jerome Friedman. The Elements of "
              "Statistical Learning, 2nd edition. Springer, 2009 (section 7.10)."},
    {"key": "Holm, 1979",
     "entry": "Sture Holm. A simple sequentially rejective multiple test procedure. "
              "Scandinavian Journal of Statistics 6(2), 65-70, 1979."},
    {"key": "Hoffer et al., 2017",
     "entry": "Elad Hoffer, Itay Hubara and Daniel Soudry. Train longer, generalize better: "
              "closing the generalization gap in large batch training of neural networks. "
              "NIPS 2017 (square-root scaling of the learning rate)."},
    {"key": "Johnson & Zhang, 2013",
     "entry": "Rie Johnson and Tong Zhang. Accelerating stochastic gradient descent using "
              "predictive variance reduction. NIPS 2013."},
    {"key": "Liu et al., 2020",
     "entry": "Jinlong Liu, Guoqing Jiang, Yunzhi Bai, Ting Chen and Huayan Wang. "
              "Understanding why neural networks generalize well through GSNR of parameters. "
              "ICLR 2020."},
    {"key": "Loshchilov & Hutter, 2017",
     "entry": "Ilya Loshchilov and Frank Hutter. SGDR: stochastic gradient descent with warm "
              "restarts. ICLR 2017 (the cosine schedule)."},
    {"key": "McCandlish et al., 2018",
     "entry": "Sam McCandlish, Jared Kaplan, Dario Amodei and the OpenAI Dota Team. An "
              "empirical model of large-batch training. arXiv:1812.06162, 2018."},
    {"key": "Parascandolo et al., 2020",
     "entry": "Giambattista Parascandolo, Alexander Neitz, Antonio Orvieto, Luigi Gresele and "
              "Bernhard Schölkopf. Learning explanations that are hard to vary (the AND-mask). "
              "arXiv:2009.00329, 2020; ICLR 2021."},
    {"key": "Schaul et al., 2013",
     "entry": "Tom Schaul, Sixin Zhang and Yann LeCun. No more pesky learning rates. ICML 2013, "
              "PMLR 28."},
    {"key": "Schmidt et al., 2021",
     "entry": "Robin M. Schmidt, Frank Schneider and Philipp Hennig. Descending through a "
              "crowded valley: benchmarking deep learning optimizers. ICML 2021, PMLR 139."},
    {"key": "Schneider et al., 2019",
     "entry": "Frank Schneider, Lukas Balles and Philipp Hennig. DeepOBS: a deep learning "
              "optimizer benchmark suite. ICLR 2019."},
    {"key": "Shallue et al., 2019",
     "entry": "Christopher J. Shallue, Jaehoon Lee, Joseph Antognini, Jascha Sohl-Dickstein, "
              "Roy Frostig and George E. Dahl. Measuring the effects of data parallelism on "
              "neural network training. JMLR 20(112), 2019."},
    {"key": "Smith & Le, 2018",
     "entry": "Samuel L. Smith and Quoc V. Le. A Bayesian perspective on generalization and "
              "stochastic gradient descent. ICLR 2018."},
    {"key": "Yin et al., 2025",
     "entry": "Yida Yin, Zhiqiu Xu, Zhiyuan Li, Trevor Darrell and Zhuang Liu. A coefficient "
              "makes SVRG effective (alpha-SVRG). ICLR 2025."},
    {"key": "Zhang et al., 2019",
     "entry": "Guodong Zhang, Lala Li, Zachary Nado, James Martens, Sushant Sachdeva, George E. "
              "Dahl, Christopher J. Shallue and Roger Grosse. Which algorithmic choices matter "
              "at which batch sizes? Insights from a noisy quadratic model. NeurIPS 2019."},
    {"key": "Zhuang et al., 2020",
     "entry": "Juntang Zhuang, Tommy Tang, Yifan Ding, Sekhar Tatikonda, Nicha Dvornek, "
              "Xenophon Papademetris and James S. Duncan. AdaBelief optimizer: adapting "
              "stepsizes by the belief in observed gradients. NeurIPS 2020."},
)

KEYS = frozenset(r["key"] for r in REFERENCES)

# one citation: names (one, "A & B" or "A et al."), a comma, a four-digit year
_CITATION = re.compile(
    r"[A-Z][\w'-]+(?: & [A-Z][\w'-]+| et al\.)?, (?:19|20)\d\d"
)
_PARENTHESES = re.compile(r"\(([^()]*)\)")


def cited_keys(text: str) -> set[str]:
    """The citation keys of every ``(Author, Year; ...)`` in ``text``."""
    found = set()
    for inside in _PARENTHESES.findall(text):
        for part in inside.split(";"):
            match = _CITATION.fullmatch(" ".join(part.split()))  # a key may span lines
            if match:
                found.add(match.group(0))
    return found


def unknown_keys(texts: Iterable[str]) -> set[str]:
    """Citation keys used in ``texts`` that have no entry in :data:`REFERENCES`."""
    return set().union(*(cited_keys(t) for t in texts)) - KEYS


def context() -> list[dict[str, str]]:
    """The reference list for the template, sorted by key."""
    return sorted(REFERENCES, key=lambda r: r["key"])
