"""Discord-side helpers shared by the cogs: errors, images, progress, delivery, command sync.

Everything here may import discord; nothing here holds a product rule (those live in
``bot/services``).
"""
