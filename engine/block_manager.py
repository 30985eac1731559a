"""Fixed-size KV blocks with reference counts, an LRU free queue and a content-addressed prefix cache.

A full block is named by a SHA-256 chained over its parent's name and its own token ids, so equal names
mean equal prefixes; the stored token ids are still compared on every hit. Token ids are handled as the bytes of
int64 arrays: one conversion per sequence and lookup, not one per block.
"""
import hashlib
from collections import OrderedDict
from dataclasses import dataclass

from engine.sequence import TOKEN_ID_BYTES, Sequence, token_bytes

ROOT_HASH = b""


@dataclass(slots=True)
class Block:
    block_id: int
    ref_count: int = 0
    hash: bytes | None = None
    token_bytes: bytes = b""


def block_hash(parent: bytes, block_token_bytes: bytes) -> bytes:
    return hashlib.sha256(parent + block_token_bytes).digest()


def common_blocks(a: bytes, b: bytes, width: int) -> int:
    """How many leading width-byte blocks a and b share: a binary search of slice comparisons (memcmp)."""
    lo, hi = 0, min(len(a), len(b)) // width
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if a[: mid * width] == b[: mid * width]:
            lo = mid
        else:
            hi = mid - 1
    return lo


@dataclass(slots=True)
class Lookup:
    """The last prefix lookup, data being the bytes of its hit blocks: a burst of requests behind one system prompt
    repeats it, and a request that starts with those bytes shares its names and hits without hashing them again."""

    data: bytes
    hashes: list[bytes]
    hits: list[int]


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True) -> None:
        self.block_size = block_size
        self.bytes_per_block = block_size * TOKEN_ID_BYTES
        self.num_blocks = num_blocks
        self.enable_prefix_caching = enable_prefix_caching
        self.blocks = [Block(i) for i in range(num_blocks)]
        self.free: OrderedDict[int, None] = OrderedDict.fromkeys(range(num_blocks))
        self.cached: dict[bytes, int] = {}
        self.prefix_queries = 0
        self.prefix_hits = 0
        self.last_lookup: Lookup | None = None

    @property
    def num_free_blocks(self) -> int:
        return len(self.free)

    @property
    def num_used_blocks(self) -> int:
        return self.num_blocks - len(self.free)

    def blocks_needed(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def find_cached_prefix(self, seq: Sequence) -> list[int]:
        """Blocks already holding this sequence's leading full blocks; at least one token is left to compute."""
        if not self.enable_prefix_caching:
            return []
        limit = (seq.num_tokens - 1) // self.block_size
        data, width = self._blocks_bytes(seq, 0, limit), self.bytes_per_block
        hits = self._hits_shared_with_last(seq, data)
        parent = seq.block_hashes[len(hits) - 1] if hits else ROOT_HASH
        for i in range(len(hits), limit):
            tokens = data[i * width : (i + 1) * width]
            h = seq.block_hashes[i] if i < len(seq.block_hashes) else block_hash(parent, tokens)
            if i >= len(seq.block_hashes):
                seq.block_hashes.append(h)
            block_id = self.cached.get(h)
            if block_id is None or self.blocks[block_id].token_bytes != tokens:
                break
            hits.append(block_id)
            parent = h
        self.last_lookup = Lookup(data[: len(hits) * width], seq.block_hashes[: len(hits)], hits[:])
        return hits

    def _hits_shared_with_last(self, seq: Sequence, data: bytes) -> list[int]:
        """The last lookup's hits over the leading blocks this sequence shares with it, where they still hold: a
        block keeps its name until it is handed out again, and then loses it (_take_free)."""
        last = self.last_lookup
        if last is None:
            return []
        # A burst behind one system prompt shares all of the last hits: one memcmp, no search.
        n = len(last.hits) if data.startswith(last.data) else common_blocks(data, last.data, self.bytes_per_block)
        hits, hashes = last.hits[:n], last.hashes[:n]
        blocks = self.blocks
        if not n or [blocks[b].hash for b in hits] != hashes:
            return []
        if len(seq.block_hashes) < n:
            seq.block_hashes.extend(hashes[len(seq.block_hashes):])
        return hits

    def allocate(self, seq: Sequence, num_new_tokens: int, cached_blocks: list[int] = ()) -> bool:
        """Grows seq's block table so that its computed tokens plus num_new_tokens have slots; False if out of blocks."""
        if cached_blocks:
            assert not seq.block_table
            evictable = sum(1 for b in cached_blocks if self.blocks[b].ref_count == 0)
        else:
            evictable = 0
        total = (seq.num_computed_tokens + len(cached_blocks) * self.block_size) + num_new_tokens
        needed = self.blocks_needed(total) - len(seq.block_table) - len(cached_blocks)
        if needed + evictable > len(self.free):
            return False
        blocks, free = self.blocks, self.free
        for b in cached_blocks:
            block = blocks[b]
            if block.ref_count == 0:
                del free[b]
            block.ref_count += 1
        seq.block_table.extend(cached_blocks)
        seq.num_named_blocks = max(seq.num_named_blocks, len(cached_blocks))
        for _ in range(max(0, needed)):
            seq.block_table.append(self._take_free())
        return True

    def _take_free(self) -> int:
        block_id, _ = self.free.popitem(last=False)
        block = self.blocks[block_id]
        if block.hash is not None:
            if self.cached.get(block.hash) == block_id:
                del self.cached[block.hash]
            block.hash, block.token_bytes = None, b""
        block.ref_count = 1
        return block_id

    def _blocks_bytes(self, seq: Sequence, first: int, end: int) -> bytes:
        """The token ids of seq's blocks first..end-1, as one byte string (bytes_per_block per block). Blocks of
        the prompt come from its bytes made once: a lookup, the naming and the caching each ask for them."""
        if end * self.block_size <= seq.num_prompt_tokens:
            return seq.prompt_bytes[first * self.bytes_per_block : end * self.bytes_per_block]
        return token_bytes(seq.token_ids[first * self.block_size : end * self.block_size])

    def full_block_hashes(self, seq: Sequence, num_tokens: int) -> list[bytes]:
        """Names of seq's full blocks among its first num_tokens tokens, computed once and kept on seq."""
        full = min(num_tokens, seq.num_tokens) // self.block_size
        done = len(seq.block_hashes)
        if full > done:
            parent = seq.block_hashes[-1] if seq.block_hashes else ROOT_HASH
            data, width = self._blocks_bytes(seq, done, full), self.bytes_per_block
            for i in range(full - done):
                parent = block_hash(parent, data[i * width : (i + 1) * width])
                seq.block_hashes.append(parent)
        return seq.block_hashes[:full]

    def cache_full_blocks(self, seq: Sequence, known_tokens: int | None = None) -> None:
        """Names the blocks that this step filled, so later requests can share them; known_tokens leaves out a
        trailing token sampled on the device and not read yet."""
        computed = seq.num_computed_tokens if known_tokens is None else min(seq.num_computed_tokens, known_tokens)
        full = computed // self.block_size
        # A decode step fills a block once in block_size steps: the other steps have nothing to name.
        if not self.enable_prefix_caching or full <= seq.num_named_blocks:
            return
        self.full_block_hashes(seq, computed)
        first = seq.num_named_blocks
        data, width = self._blocks_bytes(seq, first, full), self.bytes_per_block
        for i in range(first, full):
            block = self.blocks[seq.block_table[i]]
            if block.hash is None:
                h = seq.block_hashes[i]
                block.hash, block.token_bytes = h, data[(i - first) * width : (i - first + 1) * width]
                self.cached.setdefault(h, block.block_id)
        seq.num_named_blocks = max(seq.num_named_blocks, full)

    def free_sequence(self, seq: Sequence) -> None:
        # Tail blocks first into the free queue so that a shared prefix outlives the suffixes that hang off it.
        for block_id in reversed(seq.block_table):
            block = self.blocks[block_id]
            block.ref_count -= 1
            assert block.ref_count >= 0, f"block {block_id} freed twice"
            if block.ref_count == 0:
                if block.hash is None:
                    self.free[block_id] = None
                    self.free.move_to_end(block_id, last=False)
                else:
                    self.free[block_id] = None
        seq.block_table = []
        seq.num_named_blocks = 0

    def record_prefix_query(self, num_tokens: int, num_hit_tokens: int) -> None:
        self.prefix_queries += num_tokens
        self.prefix_hits += num_hit_tokens

    @property
    def prefix_hit_rate(self) -> float:
        return self.prefix_hits / self.prefix_queries if self.prefix_queries else 0.0
