"""What a notebook user sees of the package."""


def test_no_implementation_module_is_shadowed_by_a_function():
    import importlib
    import pkgutil

    import mijax
    for package in (mijax, mijax.attacks, mijax.defenses, mijax.models, mijax.data):
        for info in pkgutil.iter_modules(package.__path__):
            module = importlib.import_module(f"{package.__name__}.{info.name}")
            assert getattr(package, info.name, module) is module, f"{package.__name__}.{info.name}"


def test_import_leaves_the_slow_dependencies_for_first_use():
    # orbax, matplotlib and tensorflow-datasets took 0.85 of the 2.2 s of `import mijax`
    import subprocess
    import sys
    code = ("import sys, mijax; slow = [m for m in ('orbax.checkpoint', 'matplotlib', 'tensorflow_datasets') "
            "if m in sys.modules]; print(','.join(slow))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == ""
