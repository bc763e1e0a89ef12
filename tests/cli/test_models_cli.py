from bagnet.cli.main import main


def test_models_table(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out.splitlines()
    rows = {line.split()[0]: line.split() for line in out[1:]}
    assert rows["bagnet33"][1:3] == ["33", "8"] and rows["bagnet33"][4] == "16.26"
    assert rows["bagnet9"][1] == "9" and rows["bagnet17"][1] == "17"
    assert rows["bagnet33"][5] == "imagenet"


def test_bad_pattern_is_one_line_error(capsys):
    assert main(["models", "nope*"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no model matches" in err
