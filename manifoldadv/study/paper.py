"""The paper's reported numbers (section 5, Tables 1 and 2), for side-by-side comparison.

Accuracies are fractions. Table 1: rows are attacks, columns are training modes. Table 2: the
trade-off halves; `linf-adv` is the PGD-adv model (the paper reports the same 95.51%).
"""

TABLE1 = {
    "mnist": {
        "clean": {"std": 0.9882, "fgsm": 0.9879, "pgd": 0.9873, "vae": 0.9828},
        "fgsm": {"std": 0.4743, "fgsm": 0.9108, "pgd": 0.9650, "vae": 0.2794},
        "pgd": {"std": 0.0390, "fgsm": 0.1546, "pgd": 0.9551, "vae": 0.0123},
        "vae": {"std": 0.4240, "fgsm": 0.4694, "pgd": 0.5218, "vae": 0.9666},
    },
    "cifar10": {
        "clean": {"std": 0.9214, "fgsm": 0.8703, "pgd": 0.8625, "vae": 0.8559},
        "fgsm": {"std": 0.3839, "fgsm": 0.7692, "pgd": 0.7734, "vae": 0.3450},
        "pgd": {"std": 0.0740, "fgsm": 0.7514, "pgd": 0.7578, "vae": 0.1053},
        "vae": {"std": 0.1940, "fgsm": 0.3180, "pgd": 0.2631, "vae": 0.4018},
    },
}

# (attack row) -> {model column}; joint columns trained with both kinds of example
TABLE2 = {
    "mnist": {
        "lp": {"l1": {"l1": 0.7850, "pgd": 0.1213, "joint-lp": 0.5424},
               "pgd": {"l1": 0.005, "pgd": 0.9551, "joint-lp": 0.7881}},
        "gen": {"pgd": {"pgd": 0.9551, "vae": 0.0123, "joint": 0.8950},
                "vae": {"pgd": 0.5218, "vae": 0.9666, "joint": 0.9028}},
    },
    "cifar10": {
        "lp": {"l1": {"l1": 0.6622, "pgd": 0.1641, "joint-lp": 0.6023},
               "pgd": {"l1": 0.528, "pgd": 0.7578, "joint-lp": 0.6511}},
        "gen": {"pgd": {"pgd": 0.7578, "vae": 0.1053, "joint": 0.7422},
                "vae": {"pgd": 0.2631, "vae": 0.4018, "joint": 0.4247}},
    },
}


def table1(dataset: str) -> dict:
    return TABLE1.get(dataset, {})


def table2(dataset: str) -> dict:
    return TABLE2.get(dataset, {})
