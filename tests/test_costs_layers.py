"""The cost model (sngrad.costs) and the memory bound (sngrad.resources) on networks given as
layers (sngrad.architecture): a convolutional network counted by hand, and an MLP counted
the same whether it comes as widths or as an Architecture."""

import pytest

from sngrad import architecture, costs, resources
from sngrad.names import OPTIMIZERS, parse_run
from sngrad.profile import read_yaml, split_sizes

# A 4 x 4 one-channel image, a 3 x 3 convolution to 2 channels (4 x 4 x 2 = 32 outputs, a
# kernel of 3 x 3 x 1 x 2 = 18 weights and 2 biases, 4 x 4 x 18 = 288 multiply-adds), a
# 2 x 2 max-pool (2 x 2 x 2 = 8 outputs), a dense layer 8 -> 3 to the logits.
TINY_CNN = architecture.build(
    {"kind": "cnn", "channels": [2], "kernel": 3, "dense": [], "init_seed": 0}, (4, 4), 3)


def test_the_tiny_cnn_is_the_network_counted_below():
    assert TINY_CNN.layers == (architecture.Conv(4, 4, 1, 2, 3),
                               architecture.MaxPool(4, 4, 2, 2),
                               architecture.Dense(8, 3, relu=False))


def test_tiny_cnn_counts_by_hand():
    # P_W: kernel 18 + dense 24; P: and biases 2 + 3; activations 32 + 8 + 3
    assert (costs.weight_count(TINY_CNN), costs.parameter_count(TINY_CNN)) == (42, 47)
    assert TINY_CNN.unit_count() == 43
    # forward: conv product 2 x 288, bias 32, ReLU 32; pool 3 comparisons x 8;
    # dense product 2 x 24, bias 3 (no ReLU on the logits); log-softmax 4 x 3
    assert costs.forward_flops(TINY_CNN) == 576 + 32 + 32 + 24 + 48 + 3 + 12 == 727
    # backward: softmax - one-hot 3 x 3; conv ReLU mask 32, kernel gradient 2 x 288, bias
    # sums 32 and no input gradient (the first layer); pool routing 4 x 8; dense weight
    # gradient 2 x 24, bias sums 3, input gradient 2 x 24
    assert costs.backward_flops(TINY_CNN) == 9 + 32 + 576 + 32 + 32 + 48 + 3 + 48 == 780
    # moments: conv two passes, 4 x (18 + 2); dense (A*A)^T (D*D) 2 x 24, squares of A 8 and
    # of D 2 x 3, bias variance 3 x 3
    assert costs.moment_flops(TINY_CNN) == 80 + 48 + 8 + 6 + 9 == 151
    # co-moment: conv cross term 2 x (18 + 2); dense (A*A0)^T (D*D0) 48, A*A0 8, D*D0 and its
    # scaling 2 x 3, bias covariance 4 x 3
    assert costs.co_moment_flops(TINY_CNN) == 40 + 48 + 8 + 6 + 12 == 114
    # per step: variance finish 1 per kernel weight and 3 per dense weight; covariance finish
    # 1 per kernel weight and 2 per dense weight
    assert costs.variance_finish_flops(TINY_CNN) == 18 + 72 == 90
    assert costs.covariance_finish_flops(TINY_CNN) == 18 + 48 == 66
    # the products alone: forward 576 + 48; backward 576 + 48 + 48; moments the dense 48 only
    assert costs.matmul_flops(TINY_CNN) == {"forward": 624, "backward": 672, "moments": 48}


@pytest.mark.parametrize(("run", "flops"), [
    # B (F + G) + 2 P
    ("sgd", 2 * (727 + 780) + 2 * 47),
    # B (F + G + M) + (2 + 6 + 2) P + the variance finish
    ("sgd+sngrad1", 2 * (727 + 780 + 151) + (2 + 6 + 2) * 47 + 90),
    # B (2 (F + G + M) + C) + (2 + 17) P + twice the variance finish and the covariance finish
    ("sgd+cv", 2 * (2 * (727 + 780 + 151) + 114) + (2 + 17) * 47 + 2 * 90 + 66),
])
def test_tiny_cnn_step_flops_by_hand(run, flops):
    assert costs.step_flops(parse_run(run), TINY_CNN, 2) == flops


def test_tiny_cnn_step_flops_numbers():
    assert costs.step_flops(parse_run("sgd"), TINY_CNN, 2) == 3108
    assert costs.step_flops(parse_run("sgd+sngrad1"), TINY_CNN, 2) == 3876
    assert costs.anchor_flops(parse_run("sgd+svrg"), TINY_CNN, 10) == 10 * 1507 + 47


MLP_HIDDEN = [[64], [16, 8], [1024, 1024, 1024]]


@pytest.mark.parametrize("hidden", MLP_HIDDEN)
@pytest.mark.parametrize("run", sorted(OPTIMIZERS))
def test_an_mlp_counts_the_same_as_widths_and_as_layers(hidden, run):
    widths = [784, *hidden, 10]
    net = architecture.build({"hidden": hidden, "init_seed": 0}, (28, 28), 10)
    parsed = parse_run(run)
    for batch in (1, 128):
        assert costs.step_flops(parsed, net, batch) == costs.step_flops(parsed, widths, batch)
    assert costs.anchor_flops(parsed, net, 8000) == costs.anchor_flops(parsed, widths, 8000)
    assert (costs.budget_step(parsed, net, 8000, 128, 3, 1)
            == costs.budget_step(parsed, widths, 8000, 128, 3, 1))


@pytest.mark.parametrize("hidden", MLP_HIDDEN)
def test_an_mlp_as_layers_keeps_every_per_network_count(hidden):
    widths = [784, *hidden, 10]
    net = architecture.build({"hidden": hidden, "init_seed": 0}, (784,), 10)
    for count in (costs.forward_flops, costs.backward_flops, costs.moment_flops,
                  costs.co_moment_flops, costs.weight_count, costs.parameter_count,
                  costs.matmul_flops, costs.moment_floor, costs.variance_finish_flops,
                  costs.covariance_finish_flops):
        assert count(net) == count(widths)
    p_w = costs.weight_count(widths)
    assert costs.variance_finish_flops(widths) == 3 * p_w
    assert costs.covariance_finish_flops(widths) == 2 * p_w
    assert resources.job_mb(net, 128, 10, 9000) == resources.job_mb(widths, 128, 10, 9000)
    assert costs.parameter_count(net) == costs.parameter_count(widths)


def test_widths_without_hidden_layers_are_one_dense_layer():
    net = architecture.as_architecture([5, 3])
    assert net.layers == (architecture.Dense(5, 3, relu=False),)
    assert costs.forward_flops([5, 3]) == 2 * 15 + 3 + 4 * 3


def test_a_profiles_network_is_its_architecture():
    config = read_yaml("config/default.yaml")
    config["model"] = {"kind": "fmnist_2c2d", "init_seed": 0}
    net = costs._cell_shape(config, "fashion_mnist")[0]
    assert net.describe() == "28x28x1 conv5x5x32 pool2 conv5x5x64 pool2 dense1024 dense10"
    assert net.parameter_count() == 800 + 32 + 51200 + 64 + 3136 * 1024 + 1024 + 10250


def test_a_cnn_too_large_for_memory_names_its_keys():
    config = read_yaml("config/default.yaml")
    config["model"] = {"kind": "fmnist_2c2d", "init_seed": 0}
    net = architecture.build(config["model"], (28, 28), 10)
    dataset = config["datasets"][0]
    examples = sum(split_sizes(config, dataset))
    # between the data alone and one run at B = 1: the network is what does not fit
    limit = int((resources.job_mb(net, max(config["batch_sizes"]), 0, examples)
                 + resources.job_mb(net, 1, 1, examples)) / 2)
    config["resources"]["mem_mb"].update(tune=limit, train=limit)
    lines = resources.memory_problems(config, machine=10.0**7)
    assert [line.split(":")[0] for line in lines] == ["model.kind = fmnist_2c2d"] * 2
    config["model"] = {"kind": "cnn", "channels": [32, 64], "kernel": 5, "dense": [1024],
                       "init_seed": 0}
    _, train = resources.memory_problems(config, machine=10.0**7)
    assert train.startswith("model.channels = [32, 64], model.kernel = 5, model.dense = "
                            f"[1024]: a train job on {dataset} needs at least ")


def test_calibration_runs_a_convolutional_network():
    assert costs.calibrate_flops(TINY_CNN, 2, seconds=0.05) > 0
