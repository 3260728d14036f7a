"""The lesson's procedure, re-implemented as the reference rnnsweep's fast path must beat.

What a user would run without rnnsweep, step for step as the lesson does it:
- the dataset is a list of (class 1-4, text) pairs, text = title + " " + description as
  torchtext's AG_NEWS gave it;
- the vocabulary maps every `basic_english` token of the training texts to an id;
- `padify` / `pad_length` tokenize and encode every text of every batch, every epoch, and pad to
  the longest text of the batch;
- a DataLoader with random batches of 16;
- `train_epoch`: Adam (torch's default implementation) over all parameters, the dense
  embedding table included; loss and correct counts summed as tensors, `.item()` every
  `report_freq` batches; an epoch stops after `epoch_size` examples.
The three classifiers are the lesson's `RNNClassifier`, `LSTMClassifier` and
`LSTMPackClassifier`; `GRUClassifier` is its LSTM classifier with a GRU, for the GRU row.
"""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import torch
from torch import nn

from rnnsweep.data.tokenization import basic_english


def read_ag_news(path: Path) -> list[tuple[int, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return [(int(row[0]), " ".join(row[1:])) for row in csv.reader(f)]


class Vocab:
    """Token -> id, most frequent first; unknown tokens map to 0 as in the lesson's torchtext vocab."""

    def __init__(self, texts):
        counter = Counter()
        for text in texts:
            counter.update(basic_english(text))
        self.itos = ["<unk>"] + [t for t, _ in counter.most_common()]
        self.stoi = {t: i for i, t in enumerate(self.itos)}

    def __len__(self) -> int:
        return len(self.itos)

    def encode(self, text: str) -> list[int]:
        return [self.stoi.get(t, 0) for t in basic_english(text)]


def make_collate(vocab: Vocab, with_lengths: bool):
    def padify(batch):
        v = [vocab.encode(x[1]) for x in batch]
        lengths = list(map(len, v))
        width = max(lengths)
        labels = torch.LongTensor([t[0] - 1 for t in batch])
        features = torch.stack(
            [nn.functional.pad(torch.tensor(t, dtype=torch.long), (0, width - len(t)), mode="constant", value=0)
             for t in v]
        )
        return (labels, features, torch.tensor(lengths)) if with_lengths else (labels, features)

    return padify


class RNNClassifier(nn.Module):
    def __init__(self, vocab_size, embed_dim, hidden_dim, num_class):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, embed_dim)
        self.rnn = nn.RNN(embed_dim, hidden_dim, batch_first=True)
        self.fc = nn.Linear(hidden_dim, num_class)

    def forward(self, x):
        x, _ = self.rnn(self.embedding(x))
        return self.fc(x.mean(dim=1))


class LSTMClassifier(nn.Module):
    cell = nn.LSTM

    def __init__(self, vocab_size, embed_dim, hidden_dim, num_class):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, embed_dim)
        self.embedding.weight.data = torch.randn_like(self.embedding.weight.data) - 0.5
        self.rnn = self.cell(embed_dim, hidden_dim, batch_first=True)
        self.fc = nn.Linear(hidden_dim, num_class)

    def forward(self, x):
        x, h = self.rnn(self.embedding(x))
        h = h[0] if isinstance(h, tuple) else h
        return self.fc(h[-1])


class GRUClassifier(LSTMClassifier):
    cell = nn.GRU


class LSTMPackClassifier(LSTMClassifier):
    def forward(self, x, lengths):
        x = self.embedding(x)
        packed = nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        packed, (h, c) = self.rnn(packed)
        x, _ = nn.utils.rnn.pad_packed_sequence(packed, batch_first=True)
        return self.fc(h[-1])


CLASSIFIERS = {"rnn": RNNClassifier, "lstm": LSTMClassifier, "gru": GRUClassifier, "packed_lstm": LSTMPackClassifier}


def train_epoch(net, dataloader, lr=0.001, epoch_size=None, report_freq=200, use_lengths=False, device="cpu"):
    """The lesson's loop; returns (examples seen, mean loss, accuracy). Like the lesson, it moves
    each batch to `device` as it comes (lengths stay on the CPU, where packing wants them)."""
    optimizer = torch.optim.Adam(net.parameters(), lr=lr)
    loss_fn = nn.CrossEntropyLoss()
    net.train()
    total_loss, acc, count, i = 0, 0, 0, 0
    for batch in dataloader:
        labels, features = batch[0].to(device), batch[1].to(device)
        optimizer.zero_grad()
        out = net(features, batch[2]) if use_lengths else net(features)
        loss = loss_fn(out, labels)
        loss.backward()
        optimizer.step()
        total_loss += loss.detach()
        _, predicted = torch.max(out, 1)
        acc += (predicted == labels).sum()
        count += len(labels)
        i += 1
        if i % report_freq == 0:
            _ = acc.item() / count  # the lesson prints this: one host sync per report
        if epoch_size and count >= epoch_size:
            break
    return count, float(total_loss) / max(i, 1), float(acc) / max(count, 1)


@torch.no_grad()
def accuracy(net, dataloader, use_lengths=False, device="cpu") -> float:
    net.eval()
    right = total = 0
    for batch in dataloader:
        labels, features = batch[0].to(device), batch[1].to(device)
        out = net(features, batch[2]) if use_lengths else net(features)
        right += int((out.argmax(1) == labels).sum())
        total += len(batch[0])
    return right / max(total, 1)
