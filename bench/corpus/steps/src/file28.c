/* Generated source 28 of the steps context. */
int f28(int x) { return x * 28 + 1; }
