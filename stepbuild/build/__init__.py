"""The builder: stages, cache keys, the step loop, RUN and COPY/ADD steps."""
