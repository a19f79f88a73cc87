"""Progress reporting shared by the examples: a tqdm bar when tqdm is installed, else
periodic lines."""


class Progress:
    """Reports a long loop: a tqdm bar when tqdm is installed, else a line every ``every`` steps."""

    def __init__(self, total, desc, every):
        try:
            from tqdm import tqdm
        except ImportError:
            tqdm = None
        self.bar = None if tqdm is None else tqdm(total=total, desc=desc, leave=False)
        self.total, self.desc, self.every = total, desc, every

    def update(self, step, **metrics):
        text = "  ".join(f"{k} {v:.4g}" for k, v in metrics.items())
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix_str(text, refresh=False)
        elif step % self.every == 0 or step == self.total:
            print(f"{self.desc} {step:5d}/{self.total}  {text}")

    def close(self):
        if self.bar is not None:
            self.bar.close()
