"""One ``Channel`` object (and one tuple of them) per distinct channel set, shared by every
stream that names it: thousands of streams of one channel hold references, not copies
(RSS per connection is a goal, issue 14)."""

from typing import Final

from slotstream_contracts.channels import Channel

#: distinct channels whose one shared ``Channel`` object is remembered
MAX_SHARED_CHANNELS: Final = 100_000


class SharedChannels:
    """``shared(channels)``: the one tuple of shared ``Channel`` objects for these channels;
    forgets all at once past ``MAX_SHARED_CHANNELS`` entries."""

    __slots__ = ("_channels", "_channel_sets")

    def __init__(self) -> None:
        self._channels: dict[Channel, Channel] = {}
        self._channel_sets: dict[tuple[Channel, ...], tuple[Channel, ...]] = {}

    def channel(self, channel: Channel) -> Channel:
        """The one ``Channel`` object streams of this channel share."""
        found = self._channels.get(channel)
        if found is None:
            if len(self._channels) >= MAX_SHARED_CHANNELS:
                self._channels.clear()
            found = self._channels[channel] = channel
        return found

    def shared(self, channels: tuple[Channel, ...]) -> tuple[Channel, ...]:
        """The one tuple of shared ``Channel`` objects streams of these channels share."""
        found = self._channel_sets.get(channels)
        if found is None:
            if len(self._channel_sets) >= MAX_SHARED_CHANNELS:
                self._channel_sets.clear()
            found = tuple(self.channel(c) for c in channels)
            self._channel_sets[found] = found
        return found
