"""Classes that are not trigger classes (tests/bad_configs/python_class_*.yaml)."""


class NoPoll:
    def check(self):
        return True


class PollAttribute:
    poll = "not a method"
