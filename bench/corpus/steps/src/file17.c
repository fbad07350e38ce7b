/* Generated source 17 of the steps context. */
int f17(int x) { return x * 17 + 1; }
